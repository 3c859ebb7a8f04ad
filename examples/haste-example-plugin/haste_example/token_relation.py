"""``token_relation``: the student's token-to-token similarities learn the teacher's (no projector).

For one student block and one teacher block, both token sets (B×N×D_s and B×N×D_t) give a cosine-similarity
matrix B×N×N; the loss is the mean squared difference of the two matrices, in fp32. Comparing relations rather
than tokens needs no head that maps one width onto the other, so nothing is trained but the student and nothing
is left to drop at termination.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from haste_core import (
    Alignment,
    Capture,
    RecipeError,
    Registry,
    StudentOutput,
    StudentSpec,
    TeacherOutput,
    TeacherSpec,
    hookimpl,
)


def similarities(tokens_BND: Tensor) -> Tensor:
    """Cosine similarities between every pair of tokens, B×N×N, in fp32."""
    unit = F.normalize(tokens_BND.float(), dim=-1)
    return unit @ unit.transpose(1, 2)


class TokenRelation(Alignment):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        student_block: int  # 0-based block whose output tokens are compared
        teacher_block: int = -1  # -1: the teacher's final normalised patch tokens

    @classmethod
    def example_config(cls, *, student: StudentSpec, teacher: TeacherSpec) -> Config:
        return cls.Config(student_block=student.depth // 2)

    @classmethod
    def check(cls, config: Config, *, student: StudentSpec, teacher: TeacherSpec) -> None:
        if not 0 <= config.student_block < student.depth:
            raise RecipeError(
                f"student block {config.student_block} does not exist ({student.name} has blocks "
                f"0..{student.depth - 1})",
                "student_block",
            )
        if not -1 <= config.teacher_block < teacher.depth:
            raise RecipeError(
                f"teacher block {config.teacher_block} does not exist ({teacher.name} has blocks "
                f"0..{teacher.depth - 1}, and -1 for its final tokens)",
                "teacher_block",
            )
        if student.grid != teacher.token_grid:
            raise RecipeError(
                f"token grids differ ({student.name}: {student.grid}×{student.grid}, {teacher.name}: "
                f"{teacher.token_grid}×{teacher.token_grid}); relations compare token i with token i"
            )

    def __init__(self, config: Config, *, student: StudentSpec, teacher: TeacherSpec) -> None:
        super().__init__()
        self.config = config

    def student_capture(self) -> Capture:
        return Capture(hidden=frozenset({self.config.student_block}))

    def teacher_request(self) -> Capture:
        return Capture(hidden=frozenset({self.config.teacher_block}))

    def forward(self, student: StudentOutput, teacher: TeacherOutput) -> tuple[Tensor, dict[str, Tensor]]:
        ours = similarities(student.hidden[self.config.student_block])
        theirs = similarities(teacher.tokens[self.config.teacher_block])
        gap = (ours - theirs).square().mean()
        return gap, {"mean_similarity": ours.detach().mean()}


@hookimpl
def haste_register_alignments(registry: Registry) -> None:
    registry.add("token_relation", TokenRelation)
