"""The embedded default data set: scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels, 10 classes).

No download: the images ship inside scikit-learn. A fixed, seeded split holds out a fraction for evaluation
(the ``digits_vit`` teacher trains on the same training split). Pixels are scaled to [-1, 1] for the student
and to uint8 for teachers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from haste_core import DataSpec, RecipeError, Registry, hookimpl
from haste_data.base import InMemoryImages

NUM_DIGITS = 1797  # sklearn.datasets.load_digits
NUM_CLASSES = 10
DIGIT_SIDE = 8
MAX_INTENSITY = 16  # load_digits pixel values are 0..16
SPLITS = ("train", "heldout")


def load_split(split: str, heldout_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """uint8 images N×1×8×8 and int64 labels of one split; the same seed always gives the same split."""
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    digits = load_digits()
    images = torch.from_numpy(digits.images).float()
    images = (images * (255 / MAX_INTENSITY)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_heldout = round(len(labels) * heldout_fraction)
    chosen = order[:num_heldout] if split == "heldout" else order[num_heldout:]
    chosen = chosen.sort().values
    return images[chosen], labels[chosen]


class Digits(InMemoryImages):
    """Items: ``image`` uint8 1×8×8, ``x`` float 1×8×8 in [-1, 1], ``cond`` the digit (int64)."""

    @dataclass(kw_only=True, frozen=True)
    class Config:
        heldout_fraction: float = 0.2  # share of the 1,797 digits kept out of training
        split_seed: int = 0

        def __post_init__(self) -> None:
            if not 0.0 < self.heldout_fraction < 1.0:
                raise RecipeError(f"must be between 0 and 1, got {self.heldout_fraction}", "heldout_fraction")

    @classmethod
    def describe(cls, config: Config) -> DataSpec:
        num_heldout = round(NUM_DIGITS * config.heldout_fraction)
        return DataSpec(
            x_shape=(1, DIGIT_SIDE, DIGIT_SIDE),
            image_shape=(1, DIGIT_SIDE, DIGIT_SIDE),
            num_classes=NUM_CLASSES,
            num_items=NUM_DIGITS - num_heldout,
        )

    def __init__(self, config: Config, *, split: str = "train") -> None:
        self.config = config
        self.hold(*load_split(split, config.heldout_fraction, config.split_seed), NUM_CLASSES)


@hookimpl
def haste_register_datasets(registry: Registry) -> None:
    registry.add("digits", Digits)
