"""Preemption: SIGTERM, SIGINT and SIGUSR1 (what Slurm sends before a time limit) stop a run cleanly.

On the first signal the run finishes the step it is in, every rank agrees on the step to stop after
(``StopAgreement``), a checkpoint of that step is written, and the command exits with a message and status 75
(``haste_core.distributed.EXIT_PREEMPTED``, BSD's EX_TEMPFAIL: "try again", which a scheduler script can use
to requeue). Resuming from that checkpoint is bit-identical to an uninterrupted run. A second signal exits at
once, without saving.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Signal handlers that record the first stop signal and exit at once on the second."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def install(self) -> None:
        """Take over the stop signals (main thread only; elsewhere the defaults stay)."""
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self.restore()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"[haste] second stop signal ({name}): exiting now, without saving\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        if os.environ.get("RANK", "0") == "0":
            sys.stderr.write(
                f"[haste] {name} received: finishing this step, then saving a checkpoint and exiting "
                "(send it again to exit at once, without saving)\n"
            )


class StopAgreement:
    """All ranks stop after the same step: each step, every rank's "a stop signal came" flag is combined (MAX).

    With several processes the combination is an asynchronous all_reduce on a CPU (gloo) group, started after
    one step and read after the next: the decision lags one step, and no GPU synchronisation is ever added.
    """

    def __init__(self, timeout: timedelta | None = None) -> None:
        self.group: Any = None
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.distributed and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo", timeout=timeout)  # collective: every rank creates it
        self._pending: tuple[Any, torch.Tensor] | None = None

    def poll(self, stop_here: bool) -> bool:
        """Whether every rank stops now (this rank's ``stop_here`` counts from the next step on, with several
        processes); call it once per step on every rank."""
        if not self.distributed:
            return stop_here
        agreed = False
        if self._pending is not None:
            work, value = self._pending
            work.wait()
            agreed = bool(value.item())
        value = torch.tensor([int(stop_here)], dtype=torch.int32)
        self._pending = (dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group, async_op=True), value)
        return agreed

    def close(self) -> None:
        """Finish the collective in flight (every rank, at the end of training)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
