"""A benchmark-only data set: random SD-VAE-shaped latents (4×32×32 → 256 tokens for a /2 student) with random
uint8 images (1×8×8 for the digits teacher by default, ``image_shape: [3, 256, 256]`` for DINOv2). Loaded as a
local plugin by ``bench_phase_cost.py`` and ``bench_sit_xl_throughput.py``; drawn once, nothing to read from disk,
so the step time is the model's alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from haste_data.base import OpenedDataset
from torch import Tensor

from haste_core import hookimpl
from haste_core.interfaces import DataSpec
from haste_core.registry import Registry

LATENT_SHAPE = (4, 32, 32)  # SD-VAE latents of a 256-px image
IMAGE_SHAPE = (1, 8, 8)  # what digits_vit reads (it resizes to the student's grid)
NUM_CLASSES = 1000  # ImageNet's label table size


class SyntheticLatents(OpenedDataset):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        num_items: int = 256
        image_shape: tuple[int, int, int] = IMAGE_SHAPE  # C×H×W of the uint8 images the teacher reads

    @classmethod
    def describe(cls, config: Config) -> DataSpec:
        return DataSpec(
            x_shape=LATENT_SHAPE, image_shape=config.image_shape, num_classes=NUM_CLASSES, num_items=config.num_items
        )

    def __init__(self, config: Config, *, split: str = "train") -> None:
        self.config = config
        self._spec = self.describe(config)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn((config.num_items, *LATENT_SHAPE), generator=generator)
        shape = (config.num_items, *config.image_shape)
        self.images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"x": self.x[index], "cond": torch.tensor(index % NUM_CLASSES)}
        if self.images_needed:
            item["image"] = self.images[index]
        return item

    def to_images(self, x: Tensor) -> Tensor:
        return ((x[:, :3].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@hookimpl
def haste_register_datasets(registry: Registry) -> None:
    registry.add("synthetic_latents", SyntheticLatents)
