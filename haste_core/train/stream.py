"""An endless, resumable stream of training batches, split over ranks.

Each epoch is a seeded permutation of the items cut into global batches (an incomplete last batch is dropped,
so every rank sees the same number of batches); rank r takes the r-th slice of each global batch. The stream's
position (epoch, batch) goes into checkpoints, and a resumed stream yields exactly the batches an
uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from haste_core.distributed import to_device

# Mixes the run seed with the epoch number so each (seed, epoch) pair gets its own permutation.
_EPOCH_SEED_STRIDE = 1_000_003  # a prime larger than any realistic number of epochs


class EpochBatches(Sampler[list[int]]):
    """This rank's index batches for the current epoch, starting ``start`` batches into it."""

    def __init__(self, num_items: int, global_batch: int, rank: int, world_size: int, seed: int) -> None:
        super().__init__()
        self.num_items, self.global_batch = num_items, global_batch
        self.rank, self.per_rank = rank, global_batch // world_size
        self.seed = seed
        self.batches_per_epoch = num_items // global_batch
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        for batch in range(self.start, self.batches_per_epoch):
            yield self.slice(order, batch, self.rank)

    def order(self, epoch: int) -> torch.Tensor:
        """The item order of ``epoch`` (the same on every rank)."""
        generator = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def slice(self, order: torch.Tensor, batch: int, rank: int) -> list[int]:
        """Rank ``rank``'s item indices of global batch ``batch`` of an epoch's ``order``."""
        begin = batch * self.global_batch + rank * self.per_rank
        return order[begin : begin + self.per_rank].tolist()


class DataStream:
    """Batches as dicts of tensors on ``device``, forever, with a checkpointable position."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        *,
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int,
        device: torch.device,
    ) -> None:
        self.sampler = EpochBatches(len(dataset), global_batch, rank, world_size, seed)
        if self.sampler.batches_per_epoch == 0:
            raise ValueError(f"{len(dataset)} items cannot fill one global batch of {global_batch}")
        self.dataset, self.num_workers, self.device = dataset, num_workers, device
        self.seed = seed + rank
        self.loader = self._make_loader()
        self.epoch, self.batch = 0, 0
        self._iterator: Iterator[Any] | None = None

    def _make_loader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            # The loader draws worker seeds from this generator, not from the global RNG, so that creating
            # an iterator (at every epoch, and at a resume) leaves the training RNG stream untouched.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def taken(self) -> tuple[int, int]:
        """The (epoch, batch) of the batch last handed out."""
        return self.epoch, self.batch - 1

    def item_index(self, taken: tuple[int, int], rank: int, position: int) -> int:
        """The data set index of item ``position`` of the batch rank ``rank`` took at ``taken`` (see ``taken``)."""
        epoch, batch = taken
        return self.sampler.slice(self.sampler.order(epoch), batch, rank)[position]

    def load_position(self, position: dict[str, int]) -> None:
        self.epoch, self.batch = int(position["epoch"]), int(position["batch"])
        self.restart()

    def restart(self) -> None:
        """Drop prefetched batches and worker processes: the next batch is fetched from the current position by
        workers that see the data set as it is now (after ``set_images_needed``, say)."""
        self._iterator = None
        if self.num_workers:
            self.loader = self._make_loader()

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while True:
            if self._iterator is None:
                self.sampler.epoch, self.sampler.start = self.epoch, self.batch
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
                break
            except StopIteration:
                self.epoch, self.batch = self.epoch + 1, 0
                self._iterator = None
        self.batch += 1
        return to_device(batch, self.device)
