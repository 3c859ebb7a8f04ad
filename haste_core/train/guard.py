"""The divergence guard: no checkpoint ever holds a NaN or an infinity, and a diverged run says what went wrong.

Every step adds to two device-side records without reading them (no host sync per step): the first step whose
loss or gradient norm was not finite, and the first step whose input batch was not finite (with the item's place
in the batch). They are read when the run logs or saves. Before a checkpoint is written, every tensor of the
state that would be saved (weights, EMA, alignment heads, optimiser moments) is checked too, on every rank, and
the ranks agree; a non-finite state is never written, so the newest checkpoint on disk is always a finite one and
checkpoint rotation can never delete the last finite checkpoint.

The checks accept any tensor, DTensor included (each rank checks its local shard and the ranks agree), so they
work for sharded parameters as well as for replicated ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from haste_core.errors import HasteError
from haste_core.weights import checkpoint

ADVICE = "Lower optimizer.lr, keep optimizer.grad_clip on, or use precision.dtype=bf16 or fp32 instead of fp16."
_NONE = -1  # "no such step yet" in the device records


class DivergenceError(HasteError):
    """Training produced NaN or infinite values; nothing non-finite was saved."""


def local(tensor: Tensor) -> Tensor:
    """The part of ``tensor`` this process holds: a DTensor's local shard, any other tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def all_finite(tensors: Iterable[Tensor], device: torch.device) -> Tensor:
    """A 0-dim bool tensor on ``device``: every element of every floating-point tensor is finite (this process's
    shards only; ``agree`` combines ranks). Nothing is read back to the host."""
    flags = [torch.isfinite(local(t)).all().to(device) for t in tensors if torch.is_floating_point(t)]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool, device=device)


def agree(flag: Tensor) -> bool:
    """True only if ``flag`` is true on every rank (one tiny all_reduce when there are several processes)."""
    value = flag.to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def state_tensors(state: Any) -> list[Tensor]:
    """Every tensor inside a (nested) state dict, list or tuple."""
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for value in state.values() for t in state_tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in state_tensors(value)]
    return []


class DivergenceGuard:
    """Device-side records of the first non-finite step and the first non-finite input, read at log and save."""

    def __init__(
        self, device: torch.device, run_dir: Path, item_index: Callable[[tuple[int, int], int, int], int]
    ) -> None:
        """``item_index(stream_position, rank, position)``: the data set index of the item at ``position`` of the
        batch a rank took at that stream position (the data order is deterministic, so it is only computed when an
        error names an item)."""
        self.device, self.run_dir, self.item_index = device, run_dir, item_index
        self.positions: dict[int, tuple[int, int]] = {}  # step -> stream position of its batch, since the last check
        # [first step with a non-finite loss or gradient, first step with a non-finite input, its item position]
        self.record = torch.full((3,), _NONE, dtype=torch.int64, device=device)

    def observe(
        self, step: int, stream_position: tuple[int, int], inputs: Tensor, losses: Iterable[Tensor],
        grad_norm: Tensor | None,
    ) -> None:  # fmt: skip
        """Add step ``step``'s input batch (taken at ``stream_position``), loss terms and gradient norm (None: not
        checked, e.g. fp16 steps the gradient scaler skips on purpose). Device operations only."""
        self.positions[step] = stream_position
        values = [loss.detach().float().reshape(()) for loss in losses]
        if grad_norm is not None:
            values.append(grad_norm.detach().float().reshape(()))
        training_ok = torch.isfinite(torch.stack(values)).all() if values else torch.ones((), dtype=torch.bool)
        items_ok = torch.isfinite(inputs.detach().float().flatten(1)).all(dim=1)
        now = torch.tensor([step, step], dtype=torch.int64, device=self.device)
        bad_now = torch.stack([~training_ok.to(self.device), ~items_ok.all()])
        unset = self.record[:2] == _NONE
        first = torch.where(bad_now & unset, now, self.record[:2])
        position = torch.where(bad_now[1] & unset[1], torch.argmin(items_ok.to(torch.int8)), self.record[2])
        self.record = torch.cat([first, position.reshape(1)])

    def check(self, step: int) -> None:
        """Stop the run if anything non-finite was seen (every rank reads the records of every rank)."""
        records = self._gathered()
        positions, self.positions = self.positions, {}
        inputs = [(rank, int(r[1]), int(r[2])) for rank, r in enumerate(records) if r[1] != _NONE]
        if inputs:
            rank, bad_step, position = min(inputs, key=lambda item: item[1])
            where = f" on rank {rank}" if len(records) > 1 else ""
            item = f"data set item {self.item_index(positions[bad_step], rank, position)}"
            raise DivergenceError(
                f"the input batch of step {bad_step} was not finite{where}: {item} (position {position} in the "
                f"batch) holds NaN or infinite values. This is a data problem, not a learning-rate one: check or "
                f"re-prepare that item. {self._saved()}"
            )
        steps = [int(r[0]) for r in records if r[0] != _NONE]
        if steps:
            raise DivergenceError(
                f"training diverged: the loss or gradient became NaN or infinite at step {min(steps)} (seen by step "
                f"{step}); {self._saved()} {ADVICE}"
            )

    def check_state(self, step: int, state: Any) -> None:
        """Refuse to save a state holding a NaN or an infinity (all ranks agree, so all of them stop)."""
        if not agree(all_finite(state_tensors(state), self.device)):
            raise DivergenceError(
                f"training diverged: the weights or optimiser state after step {step} hold NaN or infinite values, "
                f"so they were not saved; {self._saved()} {ADVICE}"
            )

    def _saved(self) -> str:
        """Where the last finite state is (only finite checkpoints are ever written)."""
        files = checkpoint.step_files(self.run_dir)
        if not files:
            return "no checkpoint was written yet."
        return f"the last checkpoint, {files[-1]} (finite, like every checkpoint haste writes), is kept."

    def _gathered(self) -> list[list[int]]:
        if not (dist.is_available() and dist.is_initialized()):
            return [self.record.tolist()]
        out = [torch.zeros_like(self.record) for _ in range(dist.get_world_size())]
        dist.all_gather(out, self.record)
        return [record.tolist() for record in out]
