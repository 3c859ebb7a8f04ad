"""Gradient accumulation: one optimiser step over a process's batch, run as several micro-batches.

The process's share of the global batch (``global_batch_size / world_size``) is cut into micro-batches of
``data.micro_batch_size``. The objective draws t and the noise for the whole share at once, so the random
streams are those of a run without accumulation; each micro-batch's loss is scaled by its share of the samples,
so the summed gradients and the logged losses are the means over the whole batch (every loss is a mean over
samples). DDP synchronises gradients only in the backward of the last micro-batch (``no_sync`` on the others), and
so does FSDP2 (``set_requires_gradient_sync``: the other micro-batches accumulate unsharded gradients locally).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from haste_core.interfaces import TeacherOutput, TrainingPair
from haste_core.train.sharding import fsdp_units


def micro_slices(per_rank: int, micro_batch: int) -> list[slice]:
    """The micro-batches of a process's batch of ``per_rank`` samples (one slice when ``micro_batch`` is 0)."""
    size = micro_batch or per_rank
    return [slice(start, min(start + size, per_rank)) for start in range(0, per_rank, size)]


def take(value: Any, part: slice) -> Any:
    """Rows ``part`` of a tensor, or of every tensor in a (nested) dict such as a text condition."""
    if isinstance(value, dict):
        return {key: take(item, part) for key, item in value.items()}
    return value[part]


@contextmanager
def gradient_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Let DDP all-reduce (FSDP2 reduce-scatter) gradients in this forward/backward only when ``sync`` (the last
    micro-batch)."""
    units = [] if sync else fsdp_units(module)  # synchronising is every unit's default: nothing to switch
    for unit in units:
        unit.set_requires_gradient_sync(False, recurse=False)
    try:
        with module.no_sync() if isinstance(module, DistributedDataParallel) and not sync else nullcontext():
            yield
    finally:
        for unit in units:
            unit.set_requires_gradient_sync(True, recurse=False)


def accumulate(
    module: nn.Module,
    slices: list[slice],
    batch: dict[str, Any],
    pair: TrainingPair,
    encode: Callable[[slice], dict[str, TeacherOutput]],
    weights: dict[str, float],
    forward_context: Callable[[], Any],
    backward: Callable[[Tensor], None],
) -> dict[str, Tensor]:
    """Forward and backward every micro-batch; returns the loss parts averaged over the whole batch (detached).

    ``encode`` gives the teachers' outputs for the images of a micro-batch (its slice); ``forward_context`` is
    the autocast context; ``backward`` receives each micro-batch's scaled total loss.
    """
    per_rank = slices[-1].stop
    averaged: dict[str, Tensor] = {}
    for index, part in enumerate(slices):
        share = (part.stop - part.start) / per_rank
        with gradient_sync(module, sync=index == len(slices) - 1):
            with forward_context():
                teacher_outputs = encode(part)
                args = (pair.x_t[part], pair.t[part], take(batch["cond"], part), pair.target[part])
                total, parts = module(*args, teacher_outputs, weights)
            del teacher_outputs, args
            backward(total * share if len(slices) > 1 else total)
        for key, value in parts.items():
            value = value.detach() * share if len(slices) > 1 else value.detach()
            averaged[key] = averaged[key] + value if key in averaged else value
    return averaged
