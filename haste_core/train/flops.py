"""The FLOP model of a training step, and the peak of the device it runs on, for ``perf/mfu``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward of one sample (matmuls and
attention at 2 FLOPs per multiply-accumulate; element-wise work is left out, as in every published MFU). A
training step is forward + backward ≈ 3 × the forward of what is trained (the student and the alignments' heads
and losses); a teacher only runs forward. SiT-XL/2 at 256 px comes to ≈ 712 GFLOP per image per step (DiT's
118.6 G multiply-accumulates × 2 × 3). Counting the real modules, rather than a formula per architecture, makes
the model hold for every student and teacher a plugin adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets: (bf16/fp16 tensor cores, tf32 tensor cores).
# Matched against torch.cuda.get_device_name in order, so more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("B200", 2250.0, 1100.0),
    ("H200", 989.4, 494.7),
    ("H100 NVL", 835.0, 417.5),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.4, 494.7),
    ("H800", 989.4, 494.7),
    ("A100", 312.0, 156.0),
    ("A800", 312.0, 156.0),
    ("L40S", 362.1, 183.2),
    ("L4", 121.0, 60.0),
    ("RTX 4090", 165.2, 82.6),
    ("A10", 125.0, 62.5),
)
TRAIN_OVER_FORWARD = 3  # forward + backward (gradients of activations and of weights) ≈ 3 × forward


def forward_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (no gradients kept). Attention runs as explicit matmuls while counting, so that it is
    counted on every device (the fused CPU kernels are invisible to the counter); compiled modules run eagerly
    here, so counting never compiles a graph."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), torch.compiler.set_stance("force_eager"), counter:
        fn()
    return counter.get_total_flops()


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per sample of one training step, and how much of it Phase I's extra work is."""

    trained: int  # forward + backward of the student with the alignments' heads and losses
    teacher: int = 0  # the teachers' forward (Phase I)
    alignment: int = 0  # the part of ``trained`` that only exists for the alignments (capture, heads, losses)

    @property
    def total(self) -> int:
        return self.trained + self.teacher

    def shares(self) -> dict[str, float]:
        """``perf/flops_share/{teacher,alignment}`` in Phase I; nothing in Phase II."""
        if not (self.teacher or self.alignment):
            return {}
        return {
            "perf/flops_share/teacher": self.teacher / self.total,
            "perf/flops_share/alignment": self.alignment / self.total,
        }


def peak_tflops(device: torch.device, dtype: str, tf32: bool, override: float = 0.0) -> float | None:
    """The device's peak for this precision (``override`` when given); None when unknown (a CPU, an unlisted
    GPU, or plain fp32 without TF32): then no MFU is logged."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, tensor_float in PEAK_TFLOPS:
        if key in name:
            if dtype in {"bf16", "fp16"}:
                return half
            return tensor_float if tf32 else None
    return None


def mfu(flops_per_sample: int, samples_per_s_per_device: float, peak: float) -> float:
    """Model FLOPs utilisation: the FLOP rate the step's model work implies over the device's peak."""
    return flops_per_sample * samples_per_s_per_device / (peak * 1e12)
