"""Sample grids: a fixed set of images from the EMA student, drawn the same way at every grid so that grids are
comparable over training, tiled into one picture and written as a PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from haste_core.config.sections import SamplingConfig
from haste_core.distributed import to_device
from haste_core.eval.samplers import PATH_SEED_OFFSET, sample
from haste_core.interfaces import Dataset, Objective, Student


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
