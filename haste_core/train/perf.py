"""Throughput and MFU of a run: ``perf/samples_per_s_per_gpu``, ``perf/mfu`` and, in Phase I, the shares of the
step's FLOPs that go to the teachers and to the alignments (``perf/flops_share/...``).

The FLOPs of a step are counted once per phase (at its first step, on one sample of the batch, with the RNG
forked so training is unchanged) on the plain modules: compiled or checkpointed, the model work is the same.
"""

from __future__ import annotations

from typing import Any

import torch

from haste_core.interfaces import Objective, Student, TrainingPair
from haste_core.train.accumulate import take
from haste_core.train.flops import TRAIN_OVER_FORWARD, StepFlops, forward_flops, mfu, peak_tflops
from haste_core.train.stage import AlignmentStage
from haste_core.train.train_step import TrainStep


def count_step(
    student: Student,
    objective: Objective,
    stage: AlignmentStage,
    batch: dict[str, Any],
    pair: TrainingPair,
    weights: dict[str, float],
) -> StepFlops:
    """The FLOPs per sample of a training step with the alignments active now."""
    one = slice(0, 1)
    x_t, t, cond, target = pair.x_t[one], pair.t[one], take(batch["cond"], one), pair.target[one]
    devices = [x_t.device] if x_t.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        step = TrainStep(student, objective, stage.modules(), stage.student_capture())
        teacher_outputs: dict[str, Any] = {}
        teacher = 0
        if stage.teachers:
            teacher = forward_flops(lambda: teacher_outputs.update(stage.encode(batch["image"][one])))
        trained = TRAIN_OVER_FORWARD * forward_flops(lambda: step(x_t, t, cond, target, teacher_outputs, weights))
        if not stage.active:
            return StepFlops(trained=trained)
        plain = TRAIN_OVER_FORWARD * forward_flops(lambda: student(x_t, t, cond))
    return StepFlops(trained=trained, teacher=teacher, alignment=trained - plain)


class Throughput:
    """Turns a logging window's ``perf/step_s`` into per-GPU throughput and MFU for the phase's FLOP count."""

    def __init__(self, env_device: torch.device, per_rank_batch: int, dtype: str, tf32: bool, peak: float) -> None:
        self.per_rank_batch = per_rank_batch
        self.peak = peak_tflops(env_device, dtype, tf32, peak)
        self.flops: StepFlops | None = None  # counted at the first step of each phase

    def count(self, *modules_and_batch: Any) -> None:
        """Count this phase's FLOPs (``count_step``'s arguments)."""
        self.flops = count_step(*modules_and_batch)

    def metrics(self, step_s: float) -> dict[str, float]:
        per_gpu = self.per_rank_batch / step_s
        out = {"perf/samples_per_s_per_gpu": per_gpu}
        if self.flops is not None:
            out["perf/gflop_per_sample"] = self.flops.total / 1e9
            out.update(self.flops.shares())
            if self.peak:
                out["perf/mfu"] = mfu(self.flops.total, per_gpu, self.peak)
        return out
