"""Sampling from a student: Euler and Heun ODE, Euler–Maruyama SDE and DDPM ancestral samplers, and sample grids.

The ODE samplers integrate the probability-flow ODE dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) on the
uniform grid t_i = 1 − i/steps (haste_spec.md §5.1), the SDE sampler the reverse SDE on REPA's grid (§5.2); the
objective turns the student's prediction into v. With guidance s ≠ 1 the velocity is v_u + s·(v_c − v_u), computed
in one doubled batch, only at times inside the guidance interval [low, high] (§5.3).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from haste_core.config.sections import SamplingConfig
from haste_core.distributed import to_device
from haste_core.errors import HasteError
from haste_core.interfaces import Dataset, Objective, Student


def cat_conds(first: Any, second: Any) -> Any:
    """Two condition batches as one: class-id tensors are concatenated, text dicts key by key."""
    if isinstance(first, dict):
        return {key: torch.cat([first[key], second[key]]) for key in first}
    return torch.cat([first, second])


def guided_velocity(
    student: Student, objective: Objective, x: Tensor, t: Tensor, cond: Any, cfg_scale: float
) -> Tensor:
    """The (guided) probability-flow velocity at (x, t)."""
    if cfg_scale == 1.0:
        return objective.velocity(student(x, t, cond).pred, x, t)
    both_x, both_t = torch.cat([x, x]), torch.cat([t, t])
    v_cond, v_uncond = objective.velocity(with_and_without_cond(student, x, t, cond), both_x, both_t).chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


def with_and_without_cond(student: Student, x: Tensor, t: Tensor, cond: Any) -> Tensor:
    """The student's predictions for ``cond`` and for its null condition, in one doubled batch (cond first)."""
    return student(torch.cat([x, x]), torch.cat([t, t]), cat_conds(cond, student.null_cond(cond))).pred


Interval = tuple[float, float]
FULL_INTERVAL: Interval = (0.0, 1.0)
SDE_LAST_TIME = 0.04  # Euler–Maruyama grid ends at t = 0.04, then one noiseless step to 0 (haste_spec.md §5.2)
PATH_SEED_OFFSET = 1 << 40  # the sampler's own noise is seeded apart from the starting noise of the same seed
Generators = torch.Generator | list[torch.Generator] | None  # one for the batch, or one per row


def gaussian(like: Tensor, generator: Generators) -> Tensor:
    """Fresh N(0, I) noise shaped like ``like``: from one generator, or row by row from one generator per row (so
    that a row's path does not depend on the batch it is drawn in)."""
    if isinstance(generator, list):
        if len(generator) != like.shape[0]:
            raise HasteError(f"{len(generator)} generators for a batch of {like.shape[0]}; give one per row")
        rows = [torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generator]
        return torch.stack(rows)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _velocity(
    student: Student, objective: Objective, x: Tensor, time: float, cond: Any, cfg_scale: float, interval: Interval
) -> Tensor:
    """Velocity at the scalar time ``time`` for a float64 state ``x``; guidance only when low ≤ time ≤ high
    (haste_spec.md §5.3). The student sees x in ``dtype``; the result is float64."""
    low, high = interval
    scale = cfg_scale if low <= time <= high else 1.0
    x_model = x.to(_model_dtype(x))
    t = torch.full((x.shape[0],), time, device=x.device, dtype=x_model.dtype)
    return guided_velocity(student, objective, x_model, t, cond, scale).to(x.dtype)


def _model_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype == torch.float64 else x.dtype


def _state(noise: Tensor) -> Tensor:
    """Samplers keep their state in float64 (as the reference samplers do) where the device supports it."""
    return noise.double() if noise.device.type in {"cpu", "cuda"} else noise.float()


@torch.no_grad()
def euler_sample(
    student: Student,
    objective: Objective,
    noise: Tensor,
    cond: Any,
    *,
    steps: int,
    cfg_scale: float = 1.0,
    interval: Interval = FULL_INTERVAL,
    heun: bool = False,
) -> Tensor:
    """Integrate dx/dt = v from ``noise`` at t = 1 to t = 0 on t_i = 1 − i/steps (haste_spec.md §5.1).

    Euler: x ← x + Δt·v(x, t_i). Heun (``heun=True``): a second evaluation at t_{i+1} and the averaged slope,
    on every step but the last (which ends at t = 0). Returns x at t = 0 in the noise's dtype."""
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = _state(noise)
    for i in range(steps):
        t_now, t_next = times[i], times[i + 1]
        slope = _velocity(student, objective, x, t_now, cond, cfg_scale, interval)
        if heun and i < steps - 1:
            guess = x + (t_next - t_now) * slope
            slope = (slope + _velocity(student, objective, guess, t_next, cond, cfg_scale, interval)) / 2
        x = x + (t_next - t_now) * slope
    return x.to(noise.dtype)


def _rates(objective: Objective, t: Tensor) -> tuple[Tensor, Tensor]:
    """(dα/dt, dσ/dt): the objective's own ``alpha_sigma_rates`` when it has one, else by autograd."""
    own = getattr(objective, "alpha_sigma_rates", None)
    if own is not None:
        return own(t)
    with torch.enable_grad():
        leaf = t.detach().clone().requires_grad_(True)
        alpha, sigma = objective.alpha_sigma(leaf)
        d_alpha = torch.autograd.grad(alpha.sum(), leaf, retain_graph=True)[0]
        d_sigma = torch.autograd.grad(sigma.sum(), leaf)[0]
    return d_alpha, d_sigma


@torch.no_grad()
def sde_sample(
    student: Student,
    objective: Objective,
    noise: Tensor,
    cond: Any,
    *,
    steps: int,
    cfg_scale: float = 1.0,
    interval: Interval = FULL_INTERVAL,
    generator: Generators = None,
) -> Tensor:
    """Euler–Maruyama on the reverse SDE (haste_spec.md §5.2): grid linspace(1, 0.04, steps) then 0.

    The score comes from the velocity: with x = αx₀ + σε and v = α̇x₀ + σ̇ε, ε = (αv − α̇x)/(ασ̇ − α̇σ) and
    s = −ε/σ (for the linear path s = ((t−1)v − x)/t). Diffusion w(t) = 2t, drift d = v − ½·w·s, and
    x ← x + d·Δt + √w·√|Δt|·ξ; the last interval (0.04 → 0) takes the drift only. Guidance acts on v, which is
    the same as guiding d (affine in v). ``generator`` (on the noise's device; or a list, one per row) makes the path
    reproducible."""
    grid = [*torch.linspace(1.0, SDE_LAST_TIME, steps, dtype=torch.float64).tolist(), 0.0]
    x = _state(noise)
    for i in range(steps):
        t_now, t_next = grid[i], grid[i + 1]
        dt = t_next - t_now
        velocity = _velocity(student, objective, x, t_now, cond, cfg_scale, interval)
        t = torch.tensor(t_now, dtype=torch.float64)
        alpha, sigma = (float(c) for c in objective.alpha_sigma(t))
        d_alpha, d_sigma = (float(c) for c in _rates(objective, t))
        eps = (alpha * velocity - d_alpha * x) / (alpha * d_sigma - d_alpha * sigma)
        score = -eps / sigma
        diffusion = 2 * t_now
        drift = velocity - 0.5 * diffusion * score
        x = x + drift * dt
        if i < steps - 1:
            x = x + math.sqrt(diffusion) * math.sqrt(abs(dt)) * gaussian(x, generator)
    return x.to(noise.dtype)


@torch.no_grad()
def sample(
    student: Student,
    objective: Objective,
    noise: Tensor,
    cond: Any,
    config: SamplingConfig,
    *,
    generator: Generators = None,
) -> Tensor:
    """Run the sampler ``config.sampler`` (euler, heun, sde or ddpm) with ``config``'s steps, guidance and
    interval (ddpm: guidance at every step, so the interval must be the full [0, 1]). ``generator`` drives the
    stochastic samplers' noise (sde, ddpm): one for the batch, or one per row."""
    common = {"steps": config.steps, "cfg_scale": config.cfg_scale, "interval": config.guidance_interval}
    if config.sampler == "sde":
        return sde_sample(student, objective, noise, cond, generator=generator, **common)
    if config.sampler in {"euler", "heun"}:
        return euler_sample(student, objective, noise, cond, heun=config.sampler == "heun", **common)
    if config.sampler == "ddpm":
        if config.cfg_scale != 1.0 and config.guidance_interval != FULL_INTERVAL:
            raise HasteError("the ddpm sampler guides every step; leave guidance_low at 0 and guidance_high at 1")
        return ddpm_sample(
            student, objective, noise, cond, steps=config.steps, cfg_scale=config.cfg_scale, generator=generator
        )
    raise HasteError(f"unknown sampler {config.sampler!r}; choose euler, heun, sde or ddpm")


@torch.no_grad()
def sample_grid(
    student: Student, objective: Objective, dataset: Dataset, config: SamplingConfig, device: torch.device
) -> Tensor:
    """A uint8 C×H×W grid of ``config.num_images`` samples (image i of class i mod num_classes), drawn from the
    same noise every time (``config.seed``), one column per class when classes are few."""
    spec = dataset.spec
    noise = torch.randn((config.num_images, *spec.x_shape), generator=torch.Generator().manual_seed(config.seed))
    conds = to_device(dataset.sample_conds(config.num_images), device)
    generator = torch.Generator(device).manual_seed(config.seed + PATH_SEED_OFFSET)  # the same path every time
    x = sample(student, objective, noise.to(device), conds, config, generator=generator)
    return make_grid(dataset.to_images(x.float()).cpu(), grid_columns(config.num_images, spec.num_classes))


def make_grid(images: Tensor, columns: int, *, pad: int = 1, min_side: int = 32) -> Tensor:
    """Tile uint8 images B×C×H×W into one C×H'×W' picture; small images are enlarged (nearest neighbour)."""
    count, channels, height, width = images.shape
    scale = max(1, math.ceil(min_side / max(height, width)))
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    height, width = height * scale, width * scale
    rows = math.ceil(count / columns)
    grid = torch.zeros(channels, rows * (height + pad) + pad, columns * (width + pad) + pad, dtype=torch.uint8)
    for index in range(count):
        top = pad + (index // columns) * (height + pad)
        left = pad + (index % columns) * (width + pad)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def save_png(grid: Tensor, path: Path) -> None:
    """Write a uint8 C×H×W picture (C = 1 or 3) as a PNG, atomically."""
    array = grid.permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    picture.save(temporary, format="PNG")
    temporary.replace(path)


def grid_columns(num_images: int, num_classes: int) -> int:
    """One column per class when classes are few (image i has class i % num_classes), else a square grid."""
    if 0 < num_classes <= 16:
        return min(num_classes, num_images)
    return max(1, math.ceil(math.sqrt(num_images)))


@torch.no_grad()
def ddpm_sample(
    student: Student,
    objective: Objective,
    noise: Tensor,
    cond: Any,
    *,
    steps: int,
    cfg_scale: float = 1.0,
    generator: Generators = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020) on ``steps`` evenly spaced indices of the objective's schedule.

    The objective must give ``discrete_schedule()`` (ᾱ_n for n = 0..T−1, index n at t = n/(T−1)), as the
    ``ddpm`` objective does. With fewer steps than T the chain is respaced as in improved DDPM: ᾱ is kept at
    the chosen indices and β recomputed between them. The student predicts ε (C channels) or ε and learned-sigma
    values v (2C channels; log-variance = ((v+1)/2)·log β + (1 − (v+1)/2)·log β̃); without learned sigma the
    posterior variance β̃ is used. Guidance mixes ε only; the variance comes from the conditional prediction.
    """
    schedule = getattr(objective, "discrete_schedule", None)
    if schedule is None:
        raise HasteError(
            f"the ddpm sampler needs an objective with a discrete schedule (objective: ddpm); "
            f"{type(objective).__name__} has none: use the euler sampler"
        )
    alpha_bar_all = schedule().to(torch.float64)
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
