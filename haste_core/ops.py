"""Small operations that the core and several plugins share: fp32 attention logits, and reading the gradient
probe's results (``grad/dot/<a>/<b>``, ``grad/denoise_sq/<labels>``) the way termination policies do."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

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


# --- the gradient probe's results (haste_core.train.probe measures them; policies read them) ---------------------

DENOISE = "denoise"  # the denoising term's name among the probe's terms
REACH_PREFIX = "grad/denoise_sq/"


def dot_key(a: str, b: str) -> str:
    """The metric name of the dot product of terms ``a`` and ``b`` (``a`` first in term order)."""
    return f"grad/dot/{a}/{b}"


def probe_dot(metrics: dict[str, Any], a: str, b: str, order: Sequence[str]) -> float:
    """The dot product of the gradients of terms ``a`` and ``b`` in a probe result (order from ``probe_terms``)."""
    first, second = (a, b) if order.index(a) <= order.index(b) else (b, a)
    return float(metrics[dot_key(first, second)])


def probe_terms(metrics: dict[str, Any]) -> list[str]:
    """The term names of a probe result, in order (``denoise`` first)."""
    return [key.split("/")[3] for key in metrics if key.startswith(f"grad/dot/{DENOISE}/")]


def _denoise_sq(metrics: dict[str, Any], labels: Sequence[str], order: Sequence[str]) -> float:
    """Squared norm of the denoising gradient on the parameters that some of ``labels`` reach."""
    reach = {key[len(REACH_PREFIX) :]: value for key, value in metrics.items() if key.startswith(REACH_PREFIX)}
    if not reach:  # a Gram matrix alone: every shared parameter counts
        return probe_dot(metrics, DENOISE, DENOISE, order)
    return sum(float(value) for key, value in reach.items() if set(key.split("+")) & set(labels))


def conflict_cosine(metrics: dict[str, Any], labels: Sequence[str]) -> float | None:
    """Cosine between the denoising gradient and the summed gradient of ``labels``; None off probe steps."""
    if dot_key(DENOISE, DENOISE) not in metrics:
        return None
    order = probe_terms(metrics)
    labels = [label for label in labels if label in order]
    if not labels:
        return None
    cross = sum(probe_dot(metrics, DENOISE, label, order) for label in labels)
    align_sq = sum(probe_dot(metrics, a, b, order) for a in labels for b in labels)
    denom = math.sqrt(max(_denoise_sq(metrics, labels, order), 0.0) * max(align_sq, 0.0))
    return cross / denom if denom > 0 else 0.0
