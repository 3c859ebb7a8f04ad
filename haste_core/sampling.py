"""Sampling from a student: the Euler ODE sampler with classifier-free guidance, and sample grids.

The sampler integrates the probability-flow ODE dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) on the
uniform grid t_i = 1 − i/steps (haste_spec.md §5.1); the objective turns the student's prediction into v.
With guidance s > 1 the velocity is v_u + s·(v_c − v_u), computed in one doubled batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from haste_core.interfaces import Dataset, Objective, Student
from haste_core.sections import SamplingConfig


def guided_velocity(
    student: Student, objective: Objective, x: Tensor, t: Tensor, cond: Tensor, cfg_scale: float
) -> Tensor:
    """The (guided) probability-flow velocity at (x, t)."""
    if cfg_scale == 1.0:
        return objective.velocity(student(x, t, cond).pred, x, t)
    both_x, both_t = torch.cat([x, x]), torch.cat([t, t])
    pred = student(both_x, both_t, torch.cat([cond, student.null_cond(cond)])).pred
    v_cond, v_uncond = objective.velocity(pred, both_x, both_t).chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def euler_sample(
    student: Student, objective: Objective, noise: Tensor, cond: Tensor, *, steps: int, cfg_scale: float = 1.0
) -> Tensor:
    """Integrate from ``noise`` at t = 1 to t = 0 in ``steps`` Euler steps; returns x at t = 0."""
    times = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    x = noise
    for i in range(steps):
        t = times[i].expand(x.shape[0])
        x = x + (times[i + 1] - times[i]) * guided_velocity(student, objective, x, t, cond, cfg_scale)
    return x


@torch.no_grad()
def sample_grid(
    student: Student, objective: Objective, dataset: Dataset, config: SamplingConfig, device: torch.device
) -> Tensor:
    """A uint8 C×H×W grid of ``config.num_images`` samples (image i of class i mod num_classes), drawn from the
    same noise every time (``config.seed``), one column per class when classes are few."""
    spec = dataset.spec
    noise = torch.randn((config.num_images, *spec.x_shape), generator=torch.Generator().manual_seed(config.seed))
    classes = torch.arange(config.num_images) % max(spec.num_classes, 1)
    x = euler_sample(
        student, objective, noise.to(device), classes.to(device), steps=config.steps, cfg_scale=config.cfg_scale
    )
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
