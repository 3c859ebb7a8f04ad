"""HASTE attention distillation: the student's attention maps learn the teacher's, pair by pair.

For each (student block, teacher block) pair the loss is the cross-entropy −Σ_k P_k·log Q_k per (sample, head,
query), averaged, where P = softmax of the teacher's logits over patch keys and Q = softmax of the student's
logits (haste_spec.md §3.4); the pairs are averaged. Its value includes the teacher's entropy, so it does not
reach 0; its gradient is that of KL(P‖Q). ``heads: first`` compares the first H_teacher student heads with the
teacher's heads. Computed in fp32 with log-softmax. Shapes: B batch, H heads, N tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from haste_core import hookimpl
from haste_core.errors import RecipeError
from haste_core.interfaces import Alignment, Capture, StudentOutput, StudentSpec, TeacherOutput, TeacherSpec
from haste_core.registry import Registry


def attention_cross_entropy(student_logits_BHNN: Tensor, teacher_logits_BHNN: Tensor) -> Tensor:
    """Mean over (B, H, queries) of −Σ_keys softmax(teacher)·log_softmax(student), in fp32."""
    teacher_probs = teacher_logits_BHNN.float().softmax(dim=-1)
    student_log_probs = student_logits_BHNN.float().log_softmax(dim=-1)
    return -(teacher_probs * student_log_probs).sum(dim=-1).mean()


class AttentionDistillation(Alignment):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        pairs: tuple[tuple[int, int], ...]  # (student block, teacher block); HASTE: (4,8) (5,9) (6,10) (7,11)
        heads: Literal["first"] = "first"  # first: the first H_teacher student heads (HASTE)

        def __post_init__(self) -> None:
            if not self.pairs:
                raise RecipeError("give at least one [student_block, teacher_block] pair", "pairs")

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
        if student.num_heads < teacher.num_heads:
            raise RecipeError(
                f"heads 'first' needs at least as many student heads as teacher heads: {student.name} has "
                f"{student.num_heads}, {teacher.name} has {teacher.num_heads}",
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
        self.check(config, student=student, teacher=teacher)
        self.config = config
        self.teacher_heads = teacher.num_heads

    def student_capture(self) -> Capture:
        return Capture(attn=frozenset(s for s, _ in self.config.pairs))

    def teacher_request(self) -> Capture:
        return Capture(attn=frozenset(t for _, t in self.config.pairs))

    def forward(self, student: StudentOutput, teacher: TeacherOutput) -> tuple[Tensor, dict[str, Tensor]]:
        per_pair = {}
        for student_block, teacher_block in self.config.pairs:
            student_logits = student.attn_logits[student_block][:, : self.teacher_heads]
            per_pair[f"pair_{student_block}_{teacher_block}"] = attention_cross_entropy(
                student_logits, teacher.attn_logits[teacher_block]
            )
        return torch.stack(list(per_pair.values())).mean(), per_pair


@hookimpl
def haste_register_alignments(registry: Registry) -> None:
    registry.add("attention", AttentionDistillation)
