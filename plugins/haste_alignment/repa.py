"""REPA feature alignment (Yu et al. 2024): project student tokens with an MLP, match teacher patch tokens.

loss = −mean over samples and tokens of cos(projector(h), z), where h are the output tokens of the student's
``student_block`` (B×N×D) and z the teacher's tokens of ``teacher_block`` (B×N×D_t, -1 = final normalised
tokens). The projector (Linear D→P, SiLU, Linear P→P, SiLU, Linear P→D_t) belongs to this alignment, not to the
student, and is dropped with it at termination. Normalisation and the cosine are computed in fp32.
``histograms()`` gives the per-token cosines of the last batch (``align/<label>/cosine`` in TensorBoard: a mass
near 1 means the projected tokens match the teacher's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

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


class REPA(Alignment):
    published_prefix = "projectors.0."  # REPA/HASTE train.py: one projector per teacher; the first is this one

    @dataclass(kw_only=True, frozen=True)
    class Config:
        student_block: int  # 0-based; REPA/HASTE use 7 (the output of the 8th block) for SiT-L/XL, 3 for SiT-B
        teacher_block: int = -1  # -1: the teacher's final normalised patch tokens (REPA's target)
        projector_dim: int = 2048  # hidden width of the projector MLP (REPA)

        def __post_init__(self) -> None:
            if self.projector_dim < 1:
                raise RecipeError(f"must be positive, got {self.projector_dim}", "projector_dim")

    @classmethod
    def example_config(cls, *, student: StudentSpec, teacher: TeacherSpec) -> Config:
        return cls.Config(student_block=student.depth // 2, projector_dim=32)

    @classmethod
    def check(cls, config: Config, *, student: StudentSpec, teacher: TeacherSpec) -> None:
        if not 0 <= config.student_block < student.depth:
            raise RecipeError(
                f"student block {config.student_block} does not exist "
                f"({student.name} has blocks 0..{student.depth - 1})",
                "student_block",
            )
        if not -1 <= config.teacher_block < teacher.depth:
            raise RecipeError(
                f"teacher block {config.teacher_block} does not exist ({teacher.name} has blocks "
                f"0..{teacher.depth - 1}, and -1 for its final normalised tokens)",
                "teacher_block",
            )
        if student.grid != teacher.token_grid:
            raise RecipeError(
                f"token grids differ: {student.name} has {student.grid}×{student.grid} tokens, {teacher.name} "
                f"{teacher.token_grid}×{teacher.token_grid}; choose a student patch size that gives the teacher's grid"
            )

    def __init__(self, config: Config, *, student: StudentSpec, teacher: TeacherSpec) -> None:
        super().__init__()
        self.config = config
        self._last_cosine: Tensor | None = None  # for histograms(): the last batch's per-token cosines
        width = config.projector_dim
        self.projector = nn.Sequential(
            nn.Linear(student.hidden_size, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, teacher.embed_dim),
        )
        for layer in self.projector:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    @classmethod
    def from_published(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """REPA/HASTE keep the MLP as ``projectors.0.{0,2,4}.*``; ours is ``projector.{0,2,4}.*``."""
        return {f"projector.{key}": value for key, value in tensors.items()}

    @classmethod
    def to_published(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {key.removeprefix("projector."): value for key, value in state.items()}

    def student_capture(self) -> Capture:
        return Capture(hidden=frozenset({self.config.student_block}))

    def teacher_request(self) -> Capture:
        return Capture(hidden=frozenset({self.config.teacher_block}))

    def forward(self, student: StudentOutput, teacher: TeacherOutput) -> tuple[Tensor, dict[str, Tensor]]:
        projected_BND = self.projector(student.hidden[self.config.student_block])
        target_BND = teacher.tokens[self.config.teacher_block]
        cosine_BN = (F.normalize(projected_BND.float(), dim=-1) * F.normalize(target_BND.float(), dim=-1)).sum(-1)
        self._last_cosine = cosine_BN.detach()
        return -cosine_BN.mean(), {}

    def histograms(self) -> dict[str, Tensor]:
        """The per-token cosine similarities of the last batch (B·N values in [-1, 1])."""
        return {} if self._last_cosine is None else {"cosine": self._last_cosine.flatten()}


@hookimpl
def haste_register_alignments(registry: Registry) -> None:
    registry.add("repa", REPA)
