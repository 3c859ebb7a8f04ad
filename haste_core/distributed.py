"""torchrun environment, process group, rank helpers and DDP wrapping.

Plain ``python -m haste_core.run`` is one process with no process group; under ``torchrun`` with more than one
process a group is created (NCCL on GPUs, gloo on CPUs; multi-node through torchrun's rendezvous).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from haste_core.errors import HasteError, Preempted

EXIT_PREEMPTED = 75  # BSD EX_TEMPFAIL: stopped by a signal after saving; run again (or requeue) to resume
EXIT_COLLECTIVE_TIMEOUT = 3  # a collective waited run.collective_timeout_s for a stalled or lost process


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); readable before any process group."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto", timeout: timedelta | None = None) -> DistEnv:
    """Pick the device and, when torchrun started several processes, create the process group (its collectives
    give up after ``timeout``; None: torch's default)."""
    rank, world_size = env_rank(), env_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:  # binding the device lets NCCL connect eagerly and barriers know their GPU
            dist.init_process_group(backend="nccl", device_id=chosen, timeout=timeout)
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def run_command(device: str, work: Callable[[DistEnv], object], timeout: timedelta | None = None) -> int:
    """A command-line entry's exit status: ``work(env)`` inside the process group, 0 when it succeeds; a
    ``HasteError`` prints ``error: ...`` (no traceback) and gives 2; a run stopped by a signal after saving
    (``Preempted``) prints why and gives 75. The group is shut down either way."""
    env = setup(device, timeout)
    try:
        work(env)
    except HasteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Preempted as exc:
        if env.is_main:
            print(f"[haste] {exc} (exit status {EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    except RuntimeError as exc:  # torch.distributed.DistBackendError is one
        if not _timed_out(exc):
            raise
        seconds = f" after {timeout.total_seconds():g} s" if timeout is not None else ""
        print(
            f"error: rank {env.rank} of {env.world_size}: {_collective} timed out{seconds} waiting for the other "
            "processes; one of them is stalled or gone (its own log says which, if it got to say anything). "
            "If the wait was legitimate (a slow download on one rank), raise run.collective_timeout_s.",
            file=sys.stderr,
        )
        return EXIT_COLLECTIVE_TIMEOUT
    finally:
        shutdown()
    return 0


_collective = "a collective before training"  # what this process waits for in a collective now (see `collective`)


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Name the collective the block runs (``the barrier after saving``), for the message when it times out.
    An exception leaves the name set, so that ``run_command`` can say where the process was."""
    global _collective
    outer, _collective = _collective, what
    yield
    _collective = outer


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Run the block on each machine's local rank 0 first; the other ranks wait, then run it too.

    Use it around work that fills a per-machine cache (a download, a teacher trained once): the later ranks
    find the cache filled.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank != 0:
        barrier()
    yield
    if local_rank == 0:
        barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (in place, returned for convenience)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """DDP around ``module`` when there are several processes; the module itself otherwise.

    Every parameter of the wrapped module takes part in every step (alignments that stop are removed and the
    wrapper rebuilt), so no unused-parameter search is needed.
    """
    if env.world_size == 1:
        return module
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def to_device(value: Any, device: torch.device) -> Any:
    """A tensor, or a (nested) dict of tensors such as a batch or a text condition, moved to ``device``."""
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    return value.to(device, non_blocking=True)
