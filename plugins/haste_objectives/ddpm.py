"""DDPM (Ho et al. 2020) with the DiT training setup: ε target, linear β schedule, optional learned sigma.

Schedule: β_n linear from 1e-4 to 0.02 over T = 1000 steps, ᾱ_n = Π_{i≤n}(1 − β_i), and
x_n = √ᾱ_n·x0 + √(1−ᾱ_n)·ε. Time in a ``TrainingPair`` stays in [0, 1] as the interface says: the discrete index
n ∈ {0..T−1} is t = n/(T−1) (t = 0 is the least noisy step n = 0, t = 1 the noisiest n = T−1). Training draws n
uniformly; between indices (Euler sampling on a coarser grid) log ᾱ is interpolated linearly in t.

Loss: the mean squared error on ε; when the student predicts 2C channels (learned sigma, DiT) the second half
v ∈ [−1, 1] sets log Σ = ((v+1)/2)·log β_n + (1 − (v+1)/2)·log β̃_n and the loss adds the variational bound term
of improved DDPM (Nichol & Dhariwal 2021) with the model mean built from a stop-gradient ε, so that the VLB only
trains the variance: KL(q(x_{n−1}|x_n, x0) ‖ p(x_{n−1}|x_n)) in bits per dimension, and at n = 0 the
discretised Gaussian decoder NLL (bins of width 2/255 on data in [−1, 1]).

Samplers: ``velocity`` is the probability-flow velocity implied by ε (so the Euler ODE sampler works), and
``discrete_schedule`` gives ᾱ for the DDPM ancestral sampler it adds (``sampling.sampler: ddpm``,
``haste_objectives/ddpm_sampler.py``), which guides every step (no guidance interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from haste_core import HasteError, Objective, RecipeError, Registry, TrainingPair, hookimpl
from haste_objectives.ddpm_sampler import ancestral_sample

# DDPM / DiT schedule (Ho et al. 2020, §4; DiT uses the same)
NUM_STEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02
PIXEL_BIN = 1.0 / 255.0  # half-width of a pixel bin on data scaled to [-1, 1] (improved DDPM decoder)
EDGE = 0.999  # data beyond ±EDGE fall in the open-ended first/last bins
LOG_FLOOR = 1e-12  # smallest probability taken to the log in the decoder likelihood


def _ancestral(objective: DDPM, student: Any, noise: Tensor, cond: Any, config: Any, *, generator: Any) -> Tensor:
    return ancestral_sample(
        student, objective, noise, cond, steps=config.steps, cfg_scale=config.cfg_scale, generator=generator
    )


class DDPM(Objective):
    """ε-prediction DDPM objective with the hybrid (MSE + VLB) loss for learned-sigma students."""

    extra_samplers: ClassVar[dict[str, Any]] = {"ddpm": _ancestral}

    @dataclass(kw_only=True, frozen=True)
    class Config:
        num_steps: int = NUM_STEPS
        beta_start: float = BETA_START
        beta_end: float = BETA_END

        def __post_init__(self) -> None:
            if self.num_steps < 2:
                raise RecipeError(f"must be at least 2, got {self.num_steps}", "num_steps")
            if not 0.0 < self.beta_start < self.beta_end < 1.0:
                raise RecipeError(
                    f"need 0 < beta_start < beta_end < 1, got {self.beta_start} and {self.beta_end}", "beta_end"
                )

    @classmethod
    def check_sampling(cls, config: Config, sampling: Any) -> None:
        """The ancestral sampler guides every step: no guidance interval with it."""
        if sampling.sampler == "ddpm" and sampling.cfg_scale != 1.0 and sampling.guidance_interval != (0.0, 1.0):
            raise RecipeError(
                f"the ddpm sampler guides every step; leave guidance_low at 0 and guidance_high at 1 (got "
                f"[{sampling.guidance_low}, {sampling.guidance_high}]), or use the euler, heun or sde sampler",
                "guidance_high",
            )

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        steps = config.num_steps
        self.betas = torch.linspace(config.beta_start, config.beta_end, steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.log_alphas_cumprod = torch.log(self.alphas_cumprod)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        posterior_variance = self.betas * (1.0 - previous) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0; improved DDPM clips its log with β̃_1
        self.posterior_log_variance = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        self.posterior_x0_coef = self.betas * previous.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_xt_coef = (1.0 - previous) * (1.0 - self.betas).sqrt() / (1.0 - self.alphas_cumprod)

    # --- time and schedule --------------------------------------------------------------------------------------

    def discrete_schedule(self) -> Tensor:
        """ᾱ_n for n = 0..T−1 (float64); index n sits at t = n/(T−1)."""
        return self.alphas_cumprod

    def index_of(self, t: Tensor) -> Tensor:
        """The discrete index n = round(t·(T−1)) of times on the training grid."""
        return (t.double() * (self.config.num_steps - 1)).round().long().clamp(0, self.config.num_steps - 1)

    def _log_alpha_bar(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """log ᾱ at t, linearly interpolated between indices, and its derivative d log ᾱ / dt (float64)."""
        table = self.log_alphas_cumprod.to(t.device)
        position = t.double().clamp(0, 1) * (self.config.num_steps - 1)
        lower = position.floor().long().clamp(max=self.config.num_steps - 2)
        slope = table[lower + 1] - table[lower]
        return table[lower] + slope * (position - lower), slope * (self.config.num_steps - 1)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_alpha_bar, _ = self._log_alpha_bar(t)
        return torch.exp(0.5 * log_alpha_bar).to(t.dtype), torch.sqrt(-torch.expm1(log_alpha_bar)).to(t.dtype)

    def alpha_sigma_rates(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(dα/dt, dσ/dt) of α = √ᾱ, σ = √(1−ᾱ) on the interpolated schedule (float64 inside)."""
        log_alpha_bar, rate = self._log_alpha_bar(t)
        alpha_bar = torch.exp(log_alpha_bar)
        d_alpha = 0.5 * rate * alpha_bar.sqrt()
        d_sigma = -0.5 * rate * alpha_bar / torch.sqrt(-torch.expm1(log_alpha_bar))
        return d_alpha.to(t.dtype), d_sigma.to(t.dtype)

    # --- training ---------------------------------------------------------------------------------------------

    def training_pair(self, x0: Tensor) -> TrainingPair:
        index = torch.randint(0, self.config.num_steps, (x0.shape[0],), device=x0.device)
        t = index.float() / (self.config.num_steps - 1)
        alpha, sigma = (c.view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype) for c in self.alpha_sigma(t))
        noise = torch.randn_like(x0)
        return TrainingPair(x_t=alpha * x0 + sigma * noise, t=t, target=noise)

    def loss(self, pred: Tensor, pair: TrainingPair) -> Tensor:
        """MSE on ε, plus the VLB term on the variance output when the student predicts 2C channels (fp32)."""
        channels = pair.target.shape[1]
        if pred.shape[1] not in (channels, 2 * channels) or pred.shape[2:] != pair.target.shape[2:]:
            raise HasteError(
                f"ddpm needs predictions of shape {tuple(pair.target.shape[1:])} (ε) or with {2 * channels} "
                f"channels (ε and learned sigma); the student gave {tuple(pred.shape[1:])}"
            )
        eps = pred[:, :channels].float()
        mse = (eps - pair.target.float()).pow(2).mean()
        if pred.shape[1] == channels:
            return mse
        return mse + self.variational_bound(eps.detach(), pred[:, channels:].float(), pair).mean()

    def variational_bound(self, eps: Tensor, var_values: Tensor, pair: TrainingPair) -> Tensor:
        """Per-sample VLB term (bits per dimension) of the model with mean from ``eps`` and learned variance."""
        index = self.index_of(pair.t)
        shape = (-1, *[1] * (eps.dim() - 1))

        def at(table: Tensor) -> Tensor:
            return table.to(eps.device)[index].float().view(shape)

        x_t, noise = pair.x_t.float(), pair.target.float()
        sqrt_ab, sqrt_1mab = at(self.alphas_cumprod.sqrt()), at((1.0 - self.alphas_cumprod).sqrt())
        x0 = (x_t - sqrt_1mab * noise) / sqrt_ab
        x0_model = (x_t - sqrt_1mab * eps) / sqrt_ab
        coef_x0, coef_xt = at(self.posterior_x0_coef), at(self.posterior_xt_coef)
        true_mean, true_log_var = coef_x0 * x0 + coef_xt * x_t, at(self.posterior_log_variance)
        model_mean = coef_x0 * x0_model + coef_xt * x_t
        frac = (var_values + 1) / 2
        model_log_var = frac * at(self.betas.log()) + (1 - frac) * true_log_var
        kl = 0.5 * (
            -1.0 + model_log_var - true_log_var
            + torch.exp(true_log_var - model_log_var)
            + (true_mean - model_mean).pow(2) * torch.exp(-model_log_var)
        )  # fmt: skip
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = -decoder_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
        return torch.where(index == 0, nll, kl)

    # --- sampling ---------------------------------------------------------------------------------------------

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """dx/dt = α'·x̂0 + σ'·ε̂ with x̂0 = (x − σ ε̂)/α, from the ε channels of the prediction."""
        eps = pred[:, : x_t.shape[1]]
        t = t.double()
        shape = (-1, *[1] * (x_t.dim() - 1))
        coefficients = (*self.alpha_sigma(t), *self.alpha_sigma_rates(t))
        alpha, sigma, d_alpha, d_sigma = (c.view(shape).to(x_t.dtype) for c in coefficients)
        return d_alpha * (x_t - sigma * eps) / alpha + d_sigma * eps


def decoder_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) under a Gaussian discretised into 255 bins on [−1, 1], open-ended at both edges."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centred + PIXEL_BIN))
    cdf_minus = torch.special.ndtr(inv_std * (centred - PIXEL_BIN))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=LOG_FLOOR))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=LOG_FLOOR))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=LOG_FLOOR))
    return torch.where(x < -EDGE, log_cdf_plus, torch.where(x > EDGE, log_one_minus_cdf_minus, log_delta))


@hookimpl
def haste_register_objectives(registry: Registry) -> None:
    registry.add("ddpm", DDPM)
