"""What a run tells its user: the metrics of each logging window, the progress line, and the summaries at its
start and end. Values are summed on the device every step and read once per logging step (``MetricWindow``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from haste_core.distributed import DistEnv
from haste_core.train.metric_window import MetricWindow, check_finite, format_metrics
from haste_core.train.phase import PhasePlan, Stop
from haste_core.weights import checkpoint

log = logging.getLogger("haste")


class Reporter:
    """The metric window of a run and the lines it logs (rank 0)."""

    def __init__(self, env: DistEnv, global_batch: int, run_dir: Path, max_steps: int) -> None:
        self.env, self.run_dir, self.max_steps = env, run_dir, max_steps
        self.window = MetricWindow(env.device, global_batch)
        self.probe_log: dict[str, float] = {}  # the last gradient probe's health figures, logged once
        self.started, self.first_step = time.perf_counter(), 0  # this process's share of the run, for the ETA

    def collect(self, step: int, lr: float, stops: list[Stop], plan: PhasePlan) -> dict[str, float]:
        """The window's averages plus what happened since the last log (terminations, would-fire steps, the
        probe's figures); stops a diverged run, naming the last checkpoint."""
        metrics = self.window.reduce()
        metrics["optim/lr"] = lr
        skipped = metrics.get("optim/skipped_steps", 0.0)
        if skipped >= 1.0:
            del metrics["optim/grad_norm"]  # every step of the window was skipped: there is no norm to show
        elif skipped > 0.0:
            metrics["optim/grad_norm"] /= 1.0 - skipped  # the mean over the steps that were taken
        for stop in stops:
            metrics[f"termination/fired/{stop.alignment}"] = float(stop.step)
        metrics.update(self.probe_log)
        self.probe_log = {}
        for name, fired_at in plan.take_unlogged().items():
            metrics[f"termination/would_fire/{name}"] = float(fired_at)
        if stops and not plan.active:
            metrics["termination/fired"] = float(step)
        check_finite(metrics, step, checkpoint.latest_path(self.run_dir))
        if self.env.is_main:
            elapsed = time.perf_counter() - self.started
            # the ETA is the wall time per step of this process so far (sampling and checkpoints included)
            eta = elapsed / max(step - self.first_step, 1) * (self.max_steps - step)
            log.info(format_metrics(step, self.max_steps, metrics, elapsed, eta))
        return metrics

    def watched(self, plan: PhasePlan) -> None:
        """One line per watching policy that would have stopped the alignments at the last step."""
        for event in plan.watched_now:
            if self.env.is_main:
                log.info(f"step {event.step}: watch policy '{event.name}' would stop alignment now ({event.reason})")

    def start(self, step: int, student: torch.nn.Module, student_name: str, active: list[str]) -> None:
        self.started, self.first_step = time.perf_counter(), step
        if not self.env.is_main:
            return
        count = sum(p.numel() for p in student.parameters())
        phase = f"Phase I ({', '.join(active)})" if active else "Phase II / no alignment"
        where = f"resuming at step {step}" if step else "starting"
        log.info(
            f"{where}: {student_name} ({count / 1e6:.2f}M parameters), {self.env.world_size} "
            f"process(es) on {self.env.device.type}, {phase}; run folder {self.run_dir}"
        )

    def end(self, steps: int, seconds: float) -> None:
        if not self.env.is_main or steps == 0:
            return
        samples = sorted((self.run_dir / "samples").glob("*.png"))
        log.info(f"done: {steps} steps in {seconds:.0f} s. Run folder {self.run_dir}:")
        log.info(f"  samples      {samples[-1] if samples else '(none)'}")
        log.info(f"  checkpoints  {checkpoint.latest_path(self.run_dir)}")
        log.info(f"  TensorBoard  tensorboard --logdir {self.run_dir / 'tensorboard'}")

    def probed(self, health: dict[str, Any], seconds: float) -> None:
        """Keep a probe's figures for the next log, and leave its time out of the step time."""
        self.probe_log = {**health, "perf/probe_s": seconds}
        self.window.exclude(seconds)
