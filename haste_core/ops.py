"""Small tensor operations that several plugins need, kept in one place."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.amp.autocast_mode import is_autocast_available


def attention_logits(q_BHND: Tensor, k_BHND: Tensor, scale: float) -> Tensor:
    """Pre-softmax attention logits ``(q·scale) kᵀ`` (B×H×N×N) in fp32, also under bf16/fp16 autocast.

    Alignment losses read these logits; computing them from half-precision products would round them first.
    """
    device_type = q_BHND.device.type
    autocasting = is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    with torch.autocast(device_type, enabled=False) if autocasting else contextlib.nullcontext():
        return (q_BHND.float() * scale) @ k_BHND.float().transpose(-2, -1)
