"""``image_folder``: pixel-space training on a folder of class folders, decoded and cropped on the fly.

``path`` holds one folder per class (class ids follow the sorted folder names, as in ILSVRC2012 ``train/``).
Items: ``image`` uint8 3×R×R (the ADM centre crop), ``x`` the same pixels in [-1, 1] and
``cond`` the class id. With ``flip: true`` the set has twice the items: index i + N is item i mirrored. A file
that cannot be decoded fails with its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from haste_core import DataSpec, HasteError, RecipeError, Registry, hookimpl
from haste_core.data.prepare import IMAGE_SUFFIXES, adm_center_crop
from haste_core.weights.cache import cache_dir
from haste_data.base import OpenedDataset

EXAMPLE_CLASSES, EXAMPLE_PER_CLASS, EXAMPLE_SIDE = 2, 3, 20  # contract tests: a tiny folder in the haste cache


def list_folder(path: str) -> tuple[tuple[str, ...], tuple[Path, ...], tuple[int, ...]]:
    """(class names, files, labels) of a folder of class folders, sorted."""
    root = Path(path)
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    return classes, tuple(files), tuple(labels)


class ImageFolder(OpenedDataset):
    """Class-conditional pixels from image files."""

    @dataclass(kw_only=True, frozen=True)
    class Config:
        path: str  # one folder per class
        resolution: int = 256  # ADM centre crop to resolution × resolution
        flip: bool = False  # double the set with mirrored images

        def __post_init__(self) -> None:
            if self.resolution < 1:
                raise RecipeError(f"must be positive, got {self.resolution}", "resolution")

    @classmethod
    def example_config(cls, **specs: Any) -> Config:
        root = cache_dir() / "examples" / "image_folder"
        if not root.is_dir():
            rng = np.random.default_rng(0)
            for label in range(EXAMPLE_CLASSES):
                (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
                for index in range(EXAMPLE_PER_CLASS):
                    pixels = rng.integers(0, 256, (EXAMPLE_SIDE, EXAMPLE_SIDE + index, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / f"class_{label}" / f"{index}.png")
        return cls.Config(path=str(root), resolution=16)

    @classmethod
    def describe(cls, config: Config) -> DataSpec:
        return cls._spec_of(config, *list_folder(cls._root(config))[:2])

    @staticmethod
    def _root(config: Config) -> str:
        root = Path(config.path)
        if not root.is_dir():
            raise RecipeError(f"{root} does not exist; give a folder holding one folder of images per class", "path")
        return str(root)

    @staticmethod
    def _spec_of(config: Config, classes: tuple[str, ...], files: tuple[Path, ...]) -> DataSpec:
        root = config.path
        if not files:
            raise RecipeError(f"{root} holds no class folders with .jpeg/.jpg/.png images", "path")
        side = config.resolution
        return DataSpec(
            x_shape=(3, side, side),
            image_shape=(3, side, side),
            num_classes=len(classes),
            num_items=len(files) * (2 if config.flip else 1),
        )

    def __init__(self, config: Config, *, split: str = "train") -> None:
        if split != "train":
            raise HasteError(f"image_folder {config.path} has only a training split, not {split!r}")
        self.config = config
        self.classes, self.files, self.labels = list_folder(self._root(config))
        self._spec = self._spec_of(config, self.classes, self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        self.check_index(index)
        base = index % len(self.files)
        path = self.files[base]
        try:
            with Image.open(path) as picture:
                crop = adm_center_crop(picture, self.config.resolution)
        except (OSError, ValueError) as exc:
            raise HasteError(f"cannot read image {path} ({exc}); remove or replace it") from None
        image = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
        if index >= len(self.files):
            image = image.flip(-1)
        return {"image": image, "x": image.float() / 127.5 - 1, "cond": torch.tensor(self.labels[base])}

    def to_images(self, x: Tensor) -> Tensor:
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@hookimpl
def haste_register_datasets(registry: Registry) -> None:
    registry.add("image_folder", ImageFolder)
