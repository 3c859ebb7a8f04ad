"""The core sections that make a step faster or lighter without changing what it computes: ``compile``,
``activation_checkpointing``, ``perf`` and ``distributed``. Defaults are documented in docs/recipes.md and
docs/performance.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from haste_core.errors import RecipeError


@dataclass(kw_only=True, frozen=True)
class CompileConfig:
    student: bool = False  # torch.compile the student (one graph per phase: capture on, then off)
    teacher: bool = False  # torch.compile the teacher's encode
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    backend: str = "inductor"  # torch.compile's backend; aot_eager compiles fast (tests), inductor runs fast


@dataclass(kw_only=True, frozen=True)
class ActivationCheckpointingConfig:
    every: int = 0  # recompute the activations of every k-th student block in the backward: 0 none, 1 all blocks

    def __post_init__(self) -> None:
        if self.every < 0:
            raise RecipeError(f"must be 0 (none), 1 (all blocks) or k (every k-th block), got {self.every}", "every")


@dataclass(kw_only=True, frozen=True)
class PerfConfig:
    peak_tflops: float = 0.0  # the device's peak for perf/mfu; 0: from the table of known GPUs (train/flops.py)

    def __post_init__(self) -> None:
        if self.peak_tflops < 0:
            raise RecipeError(f"must be 0 (the GPU's, looked up) or positive, got {self.peak_tflops}", "peak_tflops")


@dataclass(kw_only=True, frozen=True)
class DistributedConfig:
    # ddp: every process holds the whole student (one all-reduce of the gradients per step); fsdp2: parameters,
    # gradients, optimiser state and EMA are sharded over the processes (torch.distributed.fsdp.fully_shard, one
    # all-gather per block in the forward and the backward), with sharded torch.distributed.checkpoint checkpoints
    strategy: Literal["ddp", "fsdp2"] = "ddp"
