"""Sampling from a student: the Euler and Heun ODE samplers and the Euler–Maruyama SDE sampler.

The ODE samplers integrate the probability-flow ODE dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) on the
uniform grid t_i = 1 − i/steps, the SDE sampler the reverse SDE on REPA's grid; the
objective turns the student's prediction into v. With guidance s ≠ 1 the velocity is v_u + s·(v_c − v_u), computed
in one doubled batch, only at times inside the guidance interval [low, high]; a step's start time decides for all of
its evaluations (as the REPA/HASTE reference samplers decide).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from haste_core.config.sections import SamplingConfig
from haste_core.errors import HasteError
from haste_core.interfaces import Objective, Student


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
SDE_LAST_TIME = 0.04  # Euler–Maruyama grid ends at t = 0.04, then one noiseless step to 0
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
    student: Student,
    objective: Objective,
    x: Tensor,
    time: float,
    cond: Any,
    cfg_scale: float,
    interval: Interval,
    guide_time: float | None = None,
) -> Tensor:
    """Velocity at the scalar time ``time`` for a float64 state ``x``; guidance only when low ≤ ``guide_time`` ≤
    high (``guide_time``: the time that decides, by default ``time``). The student sees x in float32 (or the state's
    lower dtype); the result is in the state's dtype."""
    low, high = interval
    decider = time if guide_time is None else guide_time
    scale = cfg_scale if low <= decider <= high else 1.0
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
    """Integrate dx/dt = v from ``noise`` at t = 1 to t = 0 on t_i = 1 − i/steps.

    Euler: x ← x + Δt·v(x, t_i). Heun (``heun=True``): a second evaluation at t_{i+1} and the averaged slope,
    on every step but the last (which ends at t = 0). Whether a step is guided is decided by its start time t_i,
    for the corrector evaluation at t_{i+1} too, as the REPA/HASTE reference samplers decide (with a guidance
    interval one evaluation in a step may lie outside it; both then take the step's decision). Returns x at t = 0
    in the noise's dtype."""
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = _state(noise)
    for i in range(steps):
        t_now, t_next = times[i], times[i + 1]
        slope = _velocity(student, objective, x, t_now, cond, cfg_scale, interval)
        if heun and i < steps - 1:
            guess = x + (t_next - t_now) * slope
            corrector = _velocity(student, objective, guess, t_next, cond, cfg_scale, interval, guide_time=t_now)
            slope = (slope + corrector) / 2
        x = x + (t_next - t_now) * slope
    return x.to(noise.dtype)


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
    """Euler–Maruyama on the reverse SDE: grid linspace(1, 0.04, steps) then 0.

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
        d_alpha, d_sigma = (float(c) for c in objective.alpha_sigma_rates(t))
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
    """Run the sampler ``config.sampler`` with ``config``'s steps, guidance and interval: ``euler``, ``heun``,
    ``sde``, or one the objective adds (``Objective.extra_samplers``, e.g. ddpm's ancestral sampler; the recipe
    loader has checked the name). ``generator`` drives the stochastic samplers' noise: one for the batch, or one
    per row."""
    common = {"steps": config.steps, "cfg_scale": config.cfg_scale, "interval": config.guidance_interval}
    if config.sampler == "sde":
        return sde_sample(student, objective, noise, cond, generator=generator, **common)
    if config.sampler in {"euler", "heun"}:
        return euler_sample(student, objective, noise, cond, heun=config.sampler == "heun", **common)
    extra = type(objective).extra_samplers
    if config.sampler not in extra:
        offered = ", ".join(["euler", "heun", "sde", *extra])
        raise HasteError(f"unknown sampler {config.sampler!r} for objective {type(objective).__name__}: use {offered}")
    return extra[config.sampler](objective, student, noise, cond, config, generator=generator)
