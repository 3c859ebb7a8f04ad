"""What the built-in data sets share: a spec fixed when the set is opened, and the ``images_needed`` switch; and
the in-memory class-labelled images of the digits and the digit scenes."""

from __future__ import annotations

import torch
from torch import Tensor

from haste_core import Dataset, DataSpec


class OpenedDataset(Dataset):
    """A data set whose ``DataSpec`` is worked out once, in ``__init__`` (``self._spec``); its length is the spec's
    ``num_items``. ``images_needed`` is what ``set_images_needed`` last said: a set whose items can go without
    ``image`` leaves it out when False (Phase II)."""

    _spec: DataSpec
    images_needed = True

    @property
    def spec(self) -> DataSpec:
        return self._spec

    def __len__(self) -> int:
        return self._spec.num_items

    def check_index(self, index: int) -> None:
        """An ``IndexError`` for an index outside 0..len-1 (negative ones included)."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of a set of {len(self)}")

    def set_images_needed(self, needed: bool) -> None:
        self.images_needed = needed


class InMemoryImages(OpenedDataset):
    """uint8 images N×C×H×W and int64 class labels held in memory; an item's ``x`` is its image in [-1, 1]."""

    def hold(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        """Keep these images and labels (called once, in ``__init__``); the spec follows from them."""
        self.images, self.labels = images, labels
        self.pixels = images.float() / 127.5 - 1
        shape = tuple(images.shape[1:])
        self._spec = DataSpec(x_shape=shape, image_shape=shape, num_classes=num_classes, num_items=len(labels))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"x": self.pixels[index], "cond": self.labels[index]}
        if self.images_needed:
            item["image"] = self.images[index]
        return item

    def to_images(self, x: Tensor) -> Tensor:
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
