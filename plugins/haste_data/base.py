"""What the built-in data sets share: a spec fixed when the set is opened, and the ``images_needed`` switch."""

from __future__ import annotations

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
