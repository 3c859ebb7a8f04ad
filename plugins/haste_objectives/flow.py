"""Flow matching with velocity prediction (SiT, REPA, HASTE): linear or cosine interpolants.

x_t = α_t·x0 + σ_t·ε with t = 0 data and t = 1 noise; the target is the velocity v* = α̇_t·x0 + σ̇_t·ε.
Time is sampled uniformly, or log-normally (s = exp(n), n ~ N(mean, std), mapped to
t = s/(1+s) on the linear path and t = (2/π)·atan(s) on the cosine path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from haste_core import HasteError, Objective, RecipeError, Registry, TrainingPair, hookimpl


class Flow(Objective):
    """Velocity-prediction flow objective; the student's prediction is the ODE velocity itself."""

    @dataclass(kw_only=True, frozen=True)
    class Config:
        path: Literal["linear", "cosine"] = "linear"
        time_sampling: Literal["uniform", "lognormal"] = "uniform"
        lognormal_mean: float = 0.0  # of n in s = exp(n); only for time_sampling: lognormal
        lognormal_std: float = 1.0

        def __post_init__(self) -> None:
            if self.lognormal_std <= 0:
                raise RecipeError(f"must be positive, got {self.lognormal_std}", "lognormal_std")

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        if self.config.path == "linear":
            return 1 - t, t
        return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)

    def alpha_sigma_rates(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(dα/dt, dσ/dt)."""
        if self.config.path == "linear":
            return -torch.ones_like(t), torch.ones_like(t)
        half_pi = math.pi / 2
        return -half_pi * torch.sin(t * half_pi), half_pi * torch.cos(t * half_pi)

    def sample_time(self, batch: int, device: torch.device) -> Tensor:
        if self.config.time_sampling == "uniform":
            return torch.rand(batch, device=device)
        s = torch.exp(self.config.lognormal_mean + self.config.lognormal_std * torch.randn(batch, device=device))
        return s / (1 + s) if self.config.path == "linear" else (2 / math.pi) * torch.atan(s)

    def training_pair(self, x0: Tensor) -> TrainingPair:
        t = self.sample_time(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        alpha, sigma = (c.view(shape).to(x0.dtype) for c in self.alpha_sigma(t))
        d_alpha, d_sigma = (c.view(shape).to(x0.dtype) for c in self.alpha_sigma_rates(t))
        return TrainingPair(x_t=alpha * x0 + sigma * noise, t=t, target=d_alpha * x0 + d_sigma * noise)

    def loss(self, pred: Tensor, pair: TrainingPair) -> Tensor:
        """Mean squared error, per sample over C×H×W, then over the batch, in fp32."""
        if pred.shape != pair.target.shape:
            raise HasteError(
                f"flow needs predictions of the data's shape {tuple(pair.target.shape[1:])}, the student gave "
                f"{tuple(pred.shape[1:])}; a learned-sigma student (dit_* with learn_sigma: true) needs objective ddpm"
            )
        return (pred.float() - pair.target.float()).pow(2).mean()

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return pred


@hookimpl
def haste_register_objectives(registry: Registry) -> None:
    registry.add("flow", Flow)
