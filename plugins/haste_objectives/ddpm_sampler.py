"""DDPM ancestral sampling for the ``ddpm`` objective (its ``extra_samplers``: ``sampling.sampler: ddpm``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from haste_core import HasteError, Student
from haste_core.eval.samplers import Generators, gaussian, with_and_without_cond


@torch.no_grad()
def ancestral_sample(
    student: Student,
    objective: Any,
    noise: Tensor,
    cond: Any,
    *,
    steps: int,
    cfg_scale: float = 1.0,
    generator: Generators = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020) on ``steps`` evenly spaced indices of the objective's schedule.

    ``objective`` is the ``ddpm`` objective (its ``discrete_schedule()``: ᾱ_n for n = 0..T−1, index n at
    t = n/(T−1)). With fewer steps than T the chain is respaced as in improved DDPM: ᾱ is kept at
    the chosen indices and β recomputed between them. The student predicts ε (C channels) or ε and learned-sigma
    values v (2C channels; log-variance = ((v+1)/2)·log β + (1 − (v+1)/2)·log β̃); without learned sigma the
    posterior variance β̃ is used. Guidance mixes ε only; the variance comes from the conditional prediction.
    """
    alpha_bar_all = objective.discrete_schedule().to(torch.float64)
    total = len(alpha_bar_all)
    if not 1 <= steps <= total:
        raise HasteError(f"the ddpm sampler takes 1..{total} steps for this schedule, got {steps}")
    chosen = torch.linspace(0, total - 1, steps, dtype=torch.float64).round().long()
    alpha_bar = alpha_bar_all[chosen]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    betas = 1.0 - alpha_bar / previous
    posterior_var = betas * (1.0 - previous) / (1.0 - alpha_bar)
    log_var_small = torch.log(torch.cat([posterior_var[1:2] if steps > 1 else betas[:1], posterior_var[1:]]))
    coef_x0 = betas * previous.sqrt() / (1.0 - alpha_bar)
    coef_xt = (1.0 - previous) * (1.0 - betas).sqrt() / (1.0 - alpha_bar)
    x, channels = noise, noise.shape[1]
    for i in reversed(range(steps)):
        t = torch.full((x.shape[0],), chosen[i].item() / (total - 1), device=x.device)
        if cfg_scale == 1.0:
            pred = student(x, t, cond).pred
        else:
            pred, unconditional = with_and_without_cond(student, x, t, cond).chunk(2)
            eps = unconditional[:, :channels] + cfg_scale * (pred[:, :channels] - unconditional[:, :channels])
            pred = torch.cat([eps, pred[:, channels:]], dim=1)
        eps = pred[:, :channels].float()
        if pred.shape[1] == 2 * channels:
            frac = (pred[:, channels:].float() + 1) / 2
            log_var = frac * math.log(betas[i].item()) + (1 - frac) * log_var_small[i].item()
        else:
            log_var = torch.full_like(eps, log_var_small[i].item())
        x0 = (x.float() - math.sqrt(1.0 - alpha_bar[i].item()) * eps) / math.sqrt(alpha_bar[i].item())
        mean = coef_x0[i].item() * x0 + coef_xt[i].item() * x.float()
        x = (mean + torch.exp(0.5 * log_var) * gaussian(mean, generator) if i > 0 else mean).to(noise.dtype)
    return x
