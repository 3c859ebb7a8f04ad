"""The module DDP wraps: the student and the active alignments' heads, giving the total loss and its parts.

One forward computes the student once (capturing what the alignments need), the objective's denoising loss, and
each alignment's loss times its weight for this step (``weights``, from ``AlignmentStage.weights``: plain floats,
so a fading weight never rebuilds DDP). The teacher outputs come in by alignment label.
"""

from __future__ import annotations

from torch import Tensor, nn

from haste_core.interfaces import Alignment, Capture, Objective, Student, TeacherOutput, TrainingPair


class TrainStep(nn.Module):
    """The student and the active alignments' heads: the module DDP wraps and the loss comes out of."""

    def __init__(
        self, student: Student, objective: Objective, alignments: dict[str, Alignment], capture: Capture | None
    ) -> None:
        super().__init__()
        self.student = student
        self.alignments = nn.ModuleDict(alignments)
        self.objective, self.capture = objective, capture

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Tensor,
        target: Tensor,
        teacher_outputs: dict[str, TeacherOutput],
        weights: dict[str, float],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.student(x_t, t, cond, capture=self.capture)
        denoise = self.objective.loss(out.pred, TrainingPair(x_t=x_t, t=t, target=target))
        total, parts = denoise, {"loss/denoise": denoise}
        for label, alignment in self.alignments.items():
            loss, extra = alignment(out, teacher_outputs[label])
            total = total + weights[label] * loss
            parts[f"align/{label}"] = loss
            parts.update({f"align/{label}/{key}": value for key, value in extra.items()})
        parts["loss/total"] = total
        return total, parts
