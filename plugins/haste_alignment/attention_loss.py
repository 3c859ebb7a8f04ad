"""Attention-map distillation loss in fp32, a chunk of query rows at a time, with an analytic backward.

Each query row of a B×H×Nq×N logit tensor is a distribution over N keys. Per row, with P = softmax(teacher/τ) and
Q = softmax(student/τ), the cross-entropy is −Σ_k P_k·log Q_k and the KL divergence is that minus the teacher's
entropy; both have the gradient (Q − P)/τ with respect to the student's logits.

``attention_loss`` never holds more than one chunk of fp32 temporaries: its forward keeps only the inputs, and
its backward recomputes Q and P chunk by chunk and writes the gradient straight into a tensor shaped like the
student's logits. ``attention_loss_naive`` is the plain autograd formula, kept as the reference that tests and
``benchmarks/bench_attention_loss.py`` compare against.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# fp32 elements per temporary in one chunk: 2**20 floats = 4 MB, so the ~7 temporaries of a chunk stay near
# 30 MB whatever the token count (1,024 tokens: 1,024 rows per chunk); larger chunks are not measurably faster.
DEFAULT_CHUNK_ELEMENTS = 2**20
KINDS = ("cross_entropy", "kl")


@dataclass(frozen=True)
class AttentionLoss:
    """The loss (differentiable) and, detached, the per-row means of the KL divergence and both entropies."""

    loss: Tensor
    kl: Tensor
    teacher_entropy: Tensor
    student_entropy: Tensor


def _wide(logits: Tensor) -> Tensor:
    """``logits`` in fp32, or in fp64 when they are fp64 (so that gradients can be checked in double precision)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _row_terms(student_RN: Tensor, teacher_RN: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """Sums over rows of cross-entropy, teacher entropy and student entropy (fp32 at least)."""
    log_q = (_wide(student_RN) / temperature).log_softmax(dim=-1)
    log_p = (_wide(teacher_RN) / temperature).log_softmax(dim=-1)
    p = log_p.exp()
    cross_entropy = -(p * log_q).sum()
    teacher_entropy = -(p * log_p).sum()
    student_entropy = -(log_q.exp() * log_q).sum()
    return cross_entropy, teacher_entropy, student_entropy


def _chunks(batch: int, rows: int, rows_per_chunk: int) -> Iterator[tuple[slice, slice]]:
    """(batch slice, row slice) pairs covering a B×M row grid with at most ``rows_per_chunk`` rows each."""
    if rows <= rows_per_chunk:
        per = max(1, rows_per_chunk // rows)
        for start in range(0, batch, per):
            yield slice(start, min(start + per, batch)), slice(None)
        return
    for index in range(batch):
        for start in range(0, rows, rows_per_chunk):
            yield slice(index, index + 1), slice(start, min(start + rows_per_chunk, rows))


class _ChunkedAttentionLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, student_BMN: Tensor, teacher_BMN: Tensor, temperature: float, rows_per_chunk: int, kl: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch, rows, keys = student_BMN.shape
        sums = torch.zeros(3, dtype=torch.float64, device=student_BMN.device)
        for b, m in _chunks(batch, rows, rows_per_chunk):
            terms = _row_terms(student_BMN[b, m].reshape(-1, keys), teacher_BMN[b, m].reshape(-1, keys), temperature)
            sums += torch.stack(terms).double()
        means = (sums / (batch * rows)).to(torch.promote_types(student_BMN.dtype, torch.float32))
        cross_entropy, teacher_entropy, student_entropy = means.unbind()
        ctx.save_for_backward(student_BMN, teacher_BMN)
        ctx.temperature, ctx.rows_per_chunk = temperature, rows_per_chunk
        kl_value = cross_entropy - teacher_entropy
        loss = kl_value.clone() if kl else cross_entropy.clone()  # a tensor of its own: the only differentiable one
        ctx.mark_non_differentiable(kl_value, teacher_entropy, student_entropy)
        return loss, kl_value, teacher_entropy, student_entropy

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *unused: Tensor) -> tuple[Tensor | None, ...]:
        student_BMN, teacher_BMN = ctx.saved_tensors
        batch, rows, keys = student_BMN.shape
        temperature = ctx.temperature
        scale = _wide(grad_loss) / (batch * rows * temperature)
        grad = torch.empty_like(student_BMN)
        for b, m in _chunks(batch, rows, ctx.rows_per_chunk):
            shape = grad[b, m].shape
            q = (_wide(student_BMN[b, m].reshape(-1, keys)) / temperature).softmax(dim=-1)
            p = (_wide(teacher_BMN[b, m].reshape(-1, keys)) / temperature).softmax(dim=-1)
            grad[b, m] = ((q - p) * scale).reshape(shape).to(grad.dtype)
        return grad, None, None, None, None


def _check(student: Tensor, teacher: Tensor, kind: str, temperature: float) -> None:
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(
            f"student and teacher attention logits must both be B×H×Nq×N with the same shape; got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)} (map the student's heads first)"
        )
    if kind not in KINDS:
        raise ValueError(f"unknown attention loss kind {kind!r}; choose one of {', '.join(KINDS)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def attention_loss(
    student_BHQN: Tensor,
    teacher_BHQN: Tensor,
    *,
    kind: str = "cross_entropy",
    temperature: float = 1.0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> AttentionLoss:
    """Mean over (B, H, queries) of the row loss, computed chunk by chunk (memory: one chunk of fp32)."""
    _check(student_BHQN, teacher_BHQN, kind, temperature)
    batch, heads, queries, keys = student_BHQN.shape
    rows_per_chunk = max(1, chunk_elements // keys)
    # B×H×Nq×N → B×(H·Nq)×N: a view even for a head slice of a larger tensor (no copy).
    student_BMN = student_BHQN.reshape(batch, heads * queries, keys)
    teacher_BMN = teacher_BHQN.detach().reshape(batch, heads * queries, keys)
    loss, kl, teacher_entropy, student_entropy = _ChunkedAttentionLoss.apply(
        student_BMN, teacher_BMN, float(temperature), rows_per_chunk, kind == "kl"
    )
    return AttentionLoss(loss, kl, teacher_entropy, student_entropy)


def attention_loss_naive(
    student_BHQN: Tensor, teacher_BHQN: Tensor, *, kind: str = "cross_entropy", temperature: float = 1.0
) -> AttentionLoss:
    """The same values by plain autograd over the whole tensor (several fp32 copies of B×H×Nq×N)."""
    _check(student_BHQN, teacher_BHQN, kind, temperature)
    log_q = (_wide(student_BHQN) / temperature).log_softmax(dim=-1)
    log_p = (_wide(teacher_BHQN.detach()) / temperature).log_softmax(dim=-1)
    p = log_p.exp()
    cross_entropy = -(p * log_q).sum(dim=-1).mean()
    teacher_entropy = -(p * log_p).sum(dim=-1).mean()
    student_entropy = -(log_q.exp() * log_q).sum(dim=-1).mean().detach()
    kl = cross_entropy - teacher_entropy
    loss = kl if kind == "kl" else cross_entropy
    return AttentionLoss(loss, kl.detach(), teacher_entropy, student_entropy)
