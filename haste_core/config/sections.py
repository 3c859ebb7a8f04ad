"""The core sections of a recipe: ``run``, ``optimizer``, ``ema``, ``precision`` and ``sampling``.

Each is a frozen dataclass validated like a component's ``Config``; defaults are documented in docs/recipes.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from haste_core.errors import RecipeError


@dataclass(kw_only=True, frozen=True)
class RunConfig:
    name: str  # the run folder is <output_dir>/<name>
    output_dir: str = "runs"
    seed: int = 0
    max_steps: int
    log_every: int = 50  # steps between logged (averaged) metrics
    checkpoint_every: int = 1000  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 3  # step_*.pt files kept besides latest.pt; 0 keeps all
    sample_every: int = 0  # steps between sample grids; 0: only at the end
    resume: str = "auto"  # auto: continue from latest.pt if present; never; or a checkpoint path
    init_from: str = ""  # a fresh run starts from these student (and EMA, repa projector) weights; see docs/students.md
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # seconds a collective may wait for the other processes before the process group gives up (a stalled rank)
    collective_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.collective_timeout_s <= 0:
            raise RecipeError(f"must be positive, got {self.collective_timeout_s}", "collective_timeout_s")
        if not self.name or "/" in self.name or self.name in {".", ".."}:
            raise RecipeError(f"{self.name!r} is not a folder name; use letters, digits, '-' and '_'", "name")
        for key in ("max_steps", "log_every"):
            if getattr(self, key) < 1:
                raise RecipeError(f"must be at least 1, got {getattr(self, key)}", key)
        for key in ("checkpoint_every", "keep_checkpoints", "sample_every"):
            if getattr(self, key) < 0:
                raise RecipeError(f"must be 0 or more, got {getattr(self, key)}", key)
        if not self.resume:
            raise RecipeError("give 'auto', 'never' or the path of a .pt file", "resume")

    @property
    def collective_timeout(self) -> timedelta:
        return timedelta(seconds=self.collective_timeout_s)


@dataclass(kw_only=True, frozen=True)
class OptimizerConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 1.0e-4  # constant after warm-up, as in REPA/HASTE
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global L2 norm; 0 disables clipping
    warmup_steps: int = 0  # linear warm-up from 0 to lr

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise RecipeError(f"must be positive, got {self.lr}", "lr")
        if self.eps <= 0:
            raise RecipeError(f"must be positive (AdamW divides by sqrt(v) + eps), got {self.eps}", "eps")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise RecipeError(f"each beta must be in [0, 1), got {list(self.betas)}", "betas")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise RecipeError("grad_clip, weight_decay and warmup_steps must be 0 or more")


@dataclass(kw_only=True, frozen=True)
class EMAConfig:
    decay: float = 0.9999  # REPA/HASTE value for ImageNet; short runs need less (0.999)

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise RecipeError(f"must be in [0, 1), got {self.decay}", "decay")


@dataclass(kw_only=True, frozen=True)
class PrecisionConfig:
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; losses stay fp32; fp16 adds a GradScaler
    tf32: bool = True  # TF32 matmuls on CUDA (no effect on CPU)


@dataclass(kw_only=True, frozen=True)
class SamplingConfig:
    sampler: str = "euler"  # euler or heun (ODE), sde (Euler–Maruyama), or one the objective adds (ddpm)
    steps: int = 50
    cfg_scale: float = 1.0  # classifier-free guidance; 1 disables it
    guidance_low: float = 0.0  # guidance only for t in [guidance_low, guidance_high] (t = 1 is noise)
    guidance_high: float = 1.0  # REPA best: 0.7, HASTE best: 0.72
    num_images: int = 64  # images per grid; class i % num_classes for image i
    seed: int = 0  # the same noise at every grid, so grids are comparable over training

    def __post_init__(self) -> None:
        if self.steps < 1 or self.num_images < 1:
            raise RecipeError("steps and num_images must be at least 1")
        if not 0.0 <= self.guidance_low <= self.guidance_high <= 1.0:
            raise RecipeError(
                f"need 0 <= guidance_low <= guidance_high <= 1, got [{self.guidance_low}, {self.guidance_high}]",
                "guidance_low",
            )

    @property
    def guidance_interval(self) -> tuple[float, float]:
        return (self.guidance_low, self.guidance_high)


@dataclass(kw_only=True, frozen=True)
class EvalConfig:
    every: int = 0  # steps between in-training FID evaluations (and at the last step); 0: none
    num_samples: int = 1000  # FID-k: images drawn from the EMA student, split over the processes
    reference: str = ""  # ADM .npz (arr_0: uint8 N×H×W×3) of real images; needed when every > 0
    inception: str = ""  # pt_inception-2015-12-05-6726825d.pth; empty: the haste or torch.hub cache
    batch: int = 64  # images per process per sampler call
    # the sampler, its steps, guidance and interval are the `sampling` section's; labels are class-balanced

    def __post_init__(self) -> None:
        for key in ("every", "num_samples", "batch"):
            if getattr(self, key) < (0 if key == "every" else 2):
                raise RecipeError(f"must be at least {0 if key == 'every' else 2}, got {getattr(self, key)}", key)
        if self.every and not self.reference:
            raise RecipeError(
                "in-training FID needs a reference: give an ADM-layout .npz of real images "
                "(e.g. VIRTUAL_imagenet256_labeled.npz), or set eval.every=0",
                "reference",
            )
