"""Training metrics accumulated on the device and read back only when logging (one sync per log).

Per-step losses are summed as device tensors; at a logging step they are averaged over the window's steps and
across ranks in one ``all_reduce``, then turned into Python floats. Wall time spent on sampling and
checkpointing is excluded from the step time.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import torch
from torch import Tensor

from haste_core import distributed
from haste_core.errors import HasteError

BYTES_PER_MB = 2**20
KB_PER_MB = 1024  # Linux reports ru_maxrss in kilobytes


class MetricWindow:
    def __init__(self, device: torch.device, global_batch: int) -> None:
        self.device = device
        self.global_batch = global_batch
        self._reset()

    def _reset(self) -> None:
        self.keys: tuple[str, ...] = ()
        self.sums: Tensor | None = None
        self.steps = 0
        self.excluded_s = 0.0
        self.started = time.perf_counter()

    def add(self, values: dict[str, Tensor]) -> None:
        """Add one step's scalar tensors to the running sums (one stacked add on the device)."""
        stacked = torch.stack([value.detach().float() for value in values.values()])
        if self.sums is None:
            self.keys, self.sums = tuple(values), stacked
        elif tuple(values) != self.keys:
            raise ValueError(f"metric names changed within a logging window: {self.keys} -> {tuple(values)}")
        else:
            self.sums += stacked
        self.steps += 1

    def exclude(self, seconds: float) -> None:
        """Do not count ``seconds`` (spent sampling or checkpointing) as training time."""
        self.excluded_s += seconds

    def reduce(self) -> dict[str, float]:
        """Window averages over steps and ranks, plus perf/step_s, perf/samples_per_s and perf/peak_mem_mb."""
        if self.steps == 0:
            return {}
        elapsed = max(time.perf_counter() - self.started - self.excluded_s, 1e-9)
        perf = torch.tensor([elapsed / self.steps, _peak_memory_mb(self.device)], device=self.device)
        local = torch.cat([self.sums / self.steps, perf])  # the same keys in the same order on every rank
        averaged = distributed.all_reduce_mean(local).tolist()
        out = dict(zip(self.keys, averaged[: len(self.keys)], strict=True))
        step_s = averaged[len(self.keys)]
        out["perf/step_s"] = step_s
        out["perf/samples_per_s"] = self.global_batch / step_s
        out["perf/peak_mem_mb"] = averaged[len(self.keys) + 1]
        self._reset()
        return out


def _peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory on CUDA (reset after reading); peak resident memory of the process on CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / BYTES_PER_MB
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KB_PER_MB


def non_finite(metrics: dict[str, float]) -> list[str]:
    """Names of the metrics that are NaN or infinite."""
    return [key for key, value in metrics.items() if not math.isfinite(value)]


def check_finite(metrics: dict[str, float], step: int, latest_checkpoint: Path) -> None:
    """Stop a diverged run with what went wrong, where the last good state is, and what to change."""
    bad = non_finite({key: value for key, value in metrics.items() if key.startswith(("loss/", "align/"))})
    if not bad:
        return
    saved = "no checkpoint was written yet"
    if latest_checkpoint.is_file():
        saved = f"the last checkpoint is {latest_checkpoint}"
    raise HasteError(
        f"training diverged: {', '.join(bad)} became NaN or infinite by step {step}; {saved}. "
        "Lower optimizer.lr, keep optimizer.grad_clip on, or use precision.dtype=bf16 or fp32 instead of fp16."
    )


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``d-h:mm:ss`` beyond a day), as a progress line shows elapsed time and ETA."""
    whole = max(0, round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def format_metrics(
    step: int, max_steps: int, metrics: dict[str, float], elapsed_s: float | None = None, eta_s: float | None = None
) -> str:
    """The progress line printed on logging steps; with ``elapsed_s`` and ``eta_s``, the time so far and to go."""
    parts = [
        f"step {step}/{max_steps}",
        f"loss {metrics['loss/total']:.4f}",
        f"denoise {metrics['loss/denoise']:.4f}",
    ]
    parts += [
        f"{key.split('/', 1)[1]} {value:.4f}"
        for key, value in metrics.items()
        if key.startswith("align/") and key.count("/") == 1 and key != "align/active"
    ]
    if "optim/grad_norm" in metrics:
        parts.append(f"grad {metrics['optim/grad_norm']:.3f}")
    if metrics.get("optim/skipped_steps"):
        parts.append(f"{metrics['optim/skipped_steps']:.0%} of steps skipped (fp16 overflow)")
    parts.append(f"{metrics['perf/step_s'] * 1000:.1f} ms/step")
    parts.append(f"{metrics['perf/samples_per_s']:.0f} samples/s")
    parts.append("aligned" if metrics.get("align/active", 0.0) > 0.5 else "denoise only")
    if elapsed_s is not None and eta_s is not None:
        parts.append(f"elapsed {format_duration(elapsed_s)} eta {format_duration(eta_s)}")
    return " | ".join(parts)
