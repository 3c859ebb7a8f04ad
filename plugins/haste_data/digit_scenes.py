"""The convergence miniature's data: 16×16 scenes, each one shipped 8×8 digit randomly scaled, rotated, sheared
and placed on an empty canvas (class: the digit).

The generative student trains on a small fixed set of scenes (``num_items``, by default 512, each from a different
digit of the ``digits`` training split); the ``scenes_vit`` teacher trains on fresh random scenes of all training
digits every epoch, so it knows far more of this world than the student's data shows; the ``heldout`` split
(scenes of the held-out digits, which neither saw) is what samples are scored against. See docs/benchmarks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from haste_core import DataSpec, RecipeError, Registry, hookimpl
from haste_data.base import InMemoryImages
from haste_data.digits import DIGIT_SIDE, NUM_CLASSES, load_split

SIDE = 16
SCALES = (1.0, 1.6)  # the digit's side on the canvas: 8 to ~13 pixels
MAX_ROTATION_DEG = 25.0
MAX_SHEAR = 0.25
HELDOUT_SCENES = 2000  # scenes of the held-out digits: the scoring reference
SPLITS = ("train", "heldout")
TRAINING_DIGITS = 1438  # the digits data set's training split (80 % of 1,797)


def make_scenes(digits: Tensor, generator: torch.Generator) -> Tensor:
    """Each uint8 N×1×8×8 digit as a uint8 N×1×16×16 scene: random scale, rotation, shear and position (the digit
    stays inside the canvas), bilinear resampling."""
    n = len(digits)
    u = torch.rand((5, n), generator=generator, dtype=torch.float64)
    scale = SCALES[0] + (SCALES[1] - SCALES[0]) * u[0]
    angle = math.radians(MAX_ROTATION_DEG) * (2 * u[1] - 1)
    shear = MAX_SHEAR * (2 * u[2] - 1)
    # the digit covers scale·8 of 16 pixels: its centre may move by the rest, and the rotation's spill is cut off
    room = (1 - scale * DIGIT_SIDE / SIDE).clamp(min=0)
    shift = torch.stack([room * (2 * u[3] - 1), room * (2 * u[4] - 1)], dim=1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output (canvas) coordinates to input (digit) coordinates, both in [-1, 1]
    zoom = SIDE / (DIGIT_SIDE * scale)
    linear = torch.stack([torch.stack([cos, -sin + shear * cos], -1), torch.stack([sin, cos + shear * sin], -1)], 1)
    inverse = torch.linalg.inv(linear) * zoom.view(n, 1, 1)
    offset = -(inverse @ shift.unsqueeze(-1))
    theta = torch.cat([inverse, offset], dim=2).float()
    grid = F.affine_grid(theta, [n, 1, SIDE, SIDE], align_corners=False)
    scenes = F.grid_sample(digits.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return scenes.round().clamp(0, 255).to(torch.uint8)


def scene_split(split: str, num_items: int, seed: int, heldout_fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """uint8 scenes N×1×16×16 and labels: ``train`` takes ``num_items`` training digits (a seeded choice), one
    scene each; ``heldout`` makes HELDOUT_SCENES scenes of the held-out digits. Always the same for one seed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    digits, labels = load_split(split, heldout_fraction, 0)
    generator = torch.Generator().manual_seed(seed + (0 if split == "train" else 10_007))
    if split == "train":
        chosen = torch.randperm(len(labels), generator=generator)[:num_items].sort().values
    else:
        chosen = torch.randint(0, len(labels), (HELDOUT_SCENES,), generator=generator)
    return make_scenes(digits[chosen], generator), labels[chosen]


class DigitScenes(InMemoryImages):
    """Items: ``image`` uint8 1×16×16, ``x`` float 1×16×16 in [-1, 1], ``cond`` the digit (int64)."""

    @dataclass(kw_only=True, frozen=True)
    class Config:
        num_items: int = 512  # the student's scenes, each of a different training digit
        seed: int = 0  # which digits and which placements

        def __post_init__(self) -> None:
            if not 0 < self.num_items <= TRAINING_DIGITS:
                raise RecipeError(f"must be between 1 and {TRAINING_DIGITS}, got {self.num_items}", "num_items")

    @classmethod
    def describe(cls, config: Config) -> DataSpec:
        shape = (1, SIDE, SIDE)
        return DataSpec(x_shape=shape, image_shape=shape, num_classes=NUM_CLASSES, num_items=config.num_items)

    def __init__(self, config: Config, *, split: str = "train") -> None:
        self.config = config
        self.hold(*scene_split(split, config.num_items, config.seed), NUM_CLASSES)


@hookimpl
def haste_register_datasets(registry: Registry) -> None:
    registry.add("digit_scenes", DigitScenes)
