"""HASTE attention distillation: the student's attention maps learn the teacher's, pair by pair.

For each (student block, teacher block) pair, the student's H_s heads are first mapped onto the teacher's H_t
heads, then every (sample, head, query) row is compared over the N patch keys (``haste_alignment.attention_loss``):

- ``heads``: ``first`` takes the first H_t student heads (HASTE; needs H_s ≥ H_t); ``mean`` averages groups of
  H_s/H_t consecutive student heads (needs H_t to divide H_s); ``learned`` mixes all student heads into each
  teacher head with a trainable H_t×H_s matrix per pair, owned by this alignment (initialised as ``mean`` when
  H_t divides H_s, else as ``first`` where possible, else uniformly). Mapping acts on logits: B×H_s×N×N →
  B×H_t×N×N.
- ``kind``: ``cross_entropy`` (HASTE; its value includes the teacher's entropy) or ``kl`` (same gradient, reads 0
  at perfect alignment). ``temperature`` τ divides both logits before the softmax (τ > 1 softens both maps); the
  loss is not multiplied by τ² as in Hinton-style distillation, so its gradient is (Q − P)/τ: fold τ² into the
  weight to keep the gradient scale of τ = 1.
- ``query_fraction`` < 1 draws that share of query rows at random each step (the same rows for every pair);
  the loss is then an unbiased estimate at a fraction of the cost.
- ``pair_weights``: the loss is Σ w_p·L_p / Σ w_p (default: equal weights, HASTE's mean over pairs).

Metrics per pair, logged as ``align/<label>/<key>``: ``pair_4_8`` (the pair's loss), ``pair_4_8/kl``,
``pair_4_8/entropy`` (the student's attention entropy, in nats; it falls as attention sharpens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from haste_alignment.attention_loss import DEFAULT_CHUNK_ELEMENTS, AttentionLoss, attention_loss
from haste_core import (
    Alignment,
    AttentionView,
    Capture,
    RecipeError,
    Registry,
    StudentOutput,
    StudentSpec,
    TeacherOutput,
    TeacherSpec,
    hookimpl,
)


def initial_mixing(student_heads: int, teacher_heads: int) -> Tensor:
    """The H_t×H_s starting matrix of ``learned``: group means if H_t divides H_s, else the first heads."""
    weight = torch.zeros(teacher_heads, student_heads)
    if student_heads % teacher_heads == 0:
        group = student_heads // teacher_heads
        for head in range(teacher_heads):
            weight[head, head * group : (head + 1) * group] = 1.0 / group
    elif student_heads >= teacher_heads:
        weight[:, :teacher_heads] = torch.eye(teacher_heads)
    else:
        weight.fill_(1.0 / student_heads)
    return weight


class AttentionDistillation(Alignment):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        pairs: tuple[tuple[int, int], ...]  # (student block, teacher block); HASTE: (4,8) (5,9) (6,10) (7,11)
        heads: Literal["first", "mean", "learned"] = "first"  # first: the first H_teacher student heads (HASTE)
        kind: Literal["cross_entropy", "kl"] = "cross_entropy"  # cross_entropy: HASTE; kl: same gradient, 0 at best
        temperature: float = 1.0  # divides student and teacher logits before the softmax
        query_fraction: float = 1.0  # share of query rows used per step (drawn at random), in (0, 1]
        pair_weights: tuple[float, ...] = ()  # one weight per pair; empty: equal weights (HASTE)
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS  # fp32 elements per chunk of the loss (peak ≈ 7 chunks)

        def __post_init__(self) -> None:
            if not self.pairs:
                raise RecipeError("give at least one [student_block, teacher_block] pair", "pairs")
            if self.temperature <= 0:
                raise RecipeError(f"must be positive, got {self.temperature}", "temperature")
            if not 0.0 < self.query_fraction <= 1.0:
                raise RecipeError(f"must be in (0, 1], got {self.query_fraction}", "query_fraction")
            if self.pair_weights and len(self.pair_weights) != len(self.pairs):
                raise RecipeError(
                    f"give one weight per pair: {len(self.pairs)} pairs, {len(self.pair_weights)} weights",
                    "pair_weights",
                )
            if any(w < 0 for w in self.pair_weights) or (self.pair_weights and sum(self.pair_weights) <= 0):
                raise RecipeError(
                    f"weights must be 0 or more with a positive sum, got {list(self.pair_weights)}", "pair_weights"
                )
            if self.chunk_elements < 1:
                raise RecipeError(f"must be positive, got {self.chunk_elements}", "chunk_elements")

    @classmethod
    def example_config(cls, *, student: StudentSpec, teacher: TeacherSpec) -> Config:
        return cls.Config(pairs=((student.depth // 2, teacher.depth - 1),))

    @classmethod
    def check(cls, config: Config, *, student: StudentSpec, teacher: TeacherSpec) -> None:
        for student_block, teacher_block in config.pairs:
            if not 0 <= student_block < student.depth:
                raise RecipeError(
                    f"student block {student_block} does not exist ({student.name} has blocks 0..{student.depth - 1})",
                    "pairs",
                )
            if not 0 <= teacher_block < teacher.depth:
                raise RecipeError(
                    f"teacher block {teacher_block} does not exist ({teacher.name} has blocks 0..{teacher.depth - 1})",
                    "pairs",
                )
        if config.heads == "first" and student.num_heads < teacher.num_heads:
            raise RecipeError(
                f"heads 'first' needs at least as many student heads as teacher heads: {student.name} has "
                f"{student.num_heads}, {teacher.name} has {teacher.num_heads}; use heads: learned",
                "heads",
            )
        if config.heads == "mean" and student.num_heads % teacher.num_heads:
            raise RecipeError(
                f"heads 'mean' averages equal groups of student heads, so {teacher.name}'s {teacher.num_heads} heads "
                f"must divide {student.name}'s {student.num_heads}; use heads: first or learned",
                "heads",
            )
        if student.grid != teacher.grid:
            raise RecipeError(
                f"attention maps cannot be compared across token grids: {student.name} has {student.grid}×"
                f"{student.grid} tokens, {teacher.name} {teacher.grid}×{teacher.grid}",
                "pairs",
            )

    def __init__(self, config: Config, *, student: StudentSpec, teacher: TeacherSpec) -> None:
        super().__init__()
        self.config = config
        self.student_heads, self.teacher_heads = student.num_heads, teacher.num_heads
        self.mixing = nn.ParameterList()
        if config.heads == "learned":
            for _ in config.pairs:
                self.mixing.append(nn.Parameter(initial_mixing(student.num_heads, teacher.num_heads)))
        weights = config.pair_weights or (1.0,) * len(config.pairs)
        self.pair_weights = [w / sum(weights) for w in weights]

    def student_capture(self) -> Capture:
        return Capture(attn=frozenset(s for s, _ in self.config.pairs))

    def teacher_request(self) -> Capture:
        return Capture(attn=frozenset(t for _, t in self.config.pairs))

    def attention_view(self) -> AttentionView:
        """Each pair's maps, the student's heads mapped as the loss maps them (the pictures keep this view, and
        with it only this module's small mixing matrices, after termination)."""
        index = {f"pair_{s}_{t}": i for i, (s, t) in enumerate(self.config.pairs)}
        return AttentionView(
            pairs={f"pair_{s}_{t}": (s, t) for s, t in self.config.pairs},
            map_heads=lambda name, logits: self.map_heads(logits, index[name]),
        )

    def map_heads(self, logits_BHNN: Tensor, pair_index: int = 0) -> Tensor:
        """Student logits B×H_s×Nq×N → B×H_t×Nq×N by the configured mapping."""
        if logits_BHNN.shape[1] != self.student_heads:
            shape = tuple(logits_BHNN.shape)
            raise ValueError(f"expected {self.student_heads} student heads, got logits of shape {shape}")
        batch, _, queries, keys = logits_BHNN.shape
        if self.config.heads == "first":
            return logits_BHNN[:, : self.teacher_heads]
        if self.config.heads == "mean":
            group = self.student_heads // self.teacher_heads
            return logits_BHNN.reshape(batch, self.teacher_heads, group, queries, keys).mean(dim=2)
        mixing = self.mixing[pair_index].to(logits_BHNN.dtype)
        with torch.autocast(logits_BHNN.device.type, enabled=False):  # keep fp32 logits fp32 under bf16 autocast
            return torch.einsum("ts,bsqk->btqk", mixing, logits_BHNN)

    def _query_rows(self, queries: int, device: torch.device) -> Tensor | None:
        if self.config.query_fraction >= 1.0:
            return None
        count = max(1, math.ceil(self.config.query_fraction * queries))
        return torch.randperm(queries, device=device)[:count]

    def forward(self, student: StudentOutput, teacher: TeacherOutput) -> tuple[Tensor, dict[str, Tensor]]:
        first_block = self.config.pairs[0][0]
        rows = self._query_rows(student.attn_logits[first_block].shape[2], student.attn_logits[first_block].device)
        total, metrics = None, {}
        for index, ((student_block, teacher_block), weight) in enumerate(
            zip(self.config.pairs, self.pair_weights, strict=True)
        ):
            student_logits = self.map_heads(student.attn_logits[student_block], index)
            teacher_logits = teacher.attn_logits[teacher_block]
            if rows is not None:
                student_logits = student_logits.index_select(2, rows)
                teacher_logits = teacher_logits.index_select(2, rows)
            result: AttentionLoss = attention_loss(
                student_logits,
                teacher_logits,
                kind=self.config.kind,
                temperature=self.config.temperature,
                chunk_elements=self.config.chunk_elements,
            )
            key = f"pair_{student_block}_{teacher_block}"
            metrics[key] = result.loss.detach()
            metrics[f"{key}/kl"] = result.kl
            metrics[f"{key}/entropy"] = result.student_entropy
            total = weight * result.loss if total is None else total + weight * result.loss
        return total, metrics


@hookimpl
def haste_register_alignments(registry: Registry) -> None:
    registry.add("attention", AttentionDistillation)
