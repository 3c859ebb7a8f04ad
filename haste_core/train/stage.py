"""Phase I as one object: everything that exists only while aligning, and its release at termination.

The stage owns the active alignments (and their heads), the teachers they use and what each teacher must
produce, the alignments' optimiser groups, and the weight each alignment has at a step (recipe weight × its
policy's scale). Which alignments are active is the phase plan's (``PhasePlan.active``) and nothing else's; the
stage derives the rest from it. When a policy fires, ``release`` drops the stopped alignments with their optimiser
state, then the teachers no alignment needs any more; once the last alignment has stopped the stage is empty: that
is Phase II, and a step costs what a step without alignment costs.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from haste_core import distributed
from haste_core.config.recipe import Recipe
from haste_core.interfaces import Alignment, AttentionView, Capture, Teacher, TeacherOutput
from haste_core.train.metric_window import BYTES_PER_MB
from haste_core.train.phase import PhasePlan, Stop

log = logging.getLogger("haste")


def group_name(label: str) -> str:
    """The optimiser param group of an alignment's heads."""
    return f"align:{label}"


class AlignmentStage:
    """The alignments still trained, their teachers, their optimiser groups and weights; empty in Phase II."""

    def __init__(
        self,
        recipe: Recipe,
        plan: PhasePlan,
        device: torch.device,
        resolve_weights: Callable[[str, str], Path | None],
    ) -> None:
        self.plan = plan
        self.nodes = {node.label: node for node in recipe.alignments}
        self.alignments: dict[str, Alignment] = {
            label: self.nodes[label]
            .build(student=recipe.student_spec, teacher=recipe.teacher_specs[self.nodes[label].teacher])
            .to(device)
            for label in plan.active
        }
        # what the attention pictures draw: kept after release, so Phase II shows the student's maps alone
        self.views: dict[str, AttentionView] = {
            label: view for label, alignment in self.alignments.items() if (view := alignment.attention_view())
        }
        self.teachers: dict[str, Teacher] = {}
        for key in self._needed_teachers():
            node = recipe.teachers[key]
            with distributed.rank_zero_first():  # a teacher may fill a cache (weights, a self-trained model)
                teacher = node.build(
                    data=recipe.data_spec,
                    student=recipe.student_spec,
                    spec=recipe.teacher_specs[key],
                    resolve_weights=resolve_weights,
                )
            self.teachers[key] = teacher.to(device).eval().requires_grad_(False)
        self._requests = self._teacher_requests()

    # --- what exists now ---------------------------------------------------------------------------------------

    @property
    def active(self) -> list[str]:
        """Labels of the alignments still trained, in recipe order (the phase plan's)."""
        return self.plan.active

    def modules(self) -> dict[str, Alignment]:
        """The active alignments, by label: what the training module wraps next to the student."""
        return {label: self.alignments[label] for label in self.active}

    def student_capture(self) -> Capture | None:
        """What the student must expose for the active alignments; None: nothing (pure fused attention)."""
        capture = Capture()
        for alignment in self.modules().values():
            capture = capture | alignment.student_capture()
        return capture or None

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimiser group per alignment with trainable heads (``align:<label>``)."""
        return [
            {"params": heads, "name": group_name(label)}
            for label, alignment in self.modules().items()
            if (heads := list(alignment.parameters()))
        ]

    def weights(self, step: int) -> dict[str, float]:
        """Each active alignment's weight in the loss of ``step``: the recipe's weight times its policy's scale
        (``fade``). The training module and the gradient probe both use this."""
        scales = self.plan.weight_scales(step)
        return {label: self.nodes[label].weight * scales.get(label, 1.0) for label in self.active}

    def label_teachers(self) -> dict[str, Teacher]:
        """Each active alignment's teacher, by label."""
        return {label: self.teachers[self.nodes[label].teacher] for label in self.active}

    @torch.no_grad()
    def encode(self, images: Tensor) -> dict[str, TeacherOutput]:
        """Every active alignment's teacher output for ``images`` (each teacher encodes the batch once)."""
        outputs = {
            key: teacher.encode(images, self._requests[key].hidden, self._requests[key].attn)
            for key, teacher in self.teachers.items()
        }
        return {label: outputs[self.nodes[label].teacher] for label in self.active}

    def histograms(self) -> dict[str, Tensor]:
        """The active alignments' distributions of their last forward, tagged ``align/<label>/<name>``."""
        return {
            f"align/{label}/{name}": values
            for label, alignment in self.modules().items()
            for name, values in alignment.histograms().items()
        }

    # --- the phase change ----------------------------------------------------------------------------------------

    def release(self, stops: list[Stop], optimizer: torch.optim.Optimizer, step: int) -> None:
        """Drop what the stopped alignments used: their modules, optimiser groups and Adam state, then every
        teacher no active alignment needs (its memory returned)."""
        for stop in stops:
            log.info(f"step {stop.step}: alignment '{stop.alignment}' terminated ({stop.reason})")
            del self.alignments[stop.alignment]
            drop_param_group(optimizer, group_name(stop.alignment))
        for key in sorted(set(self.teachers) - set(self._needed_teachers())):
            teacher = self.teachers.pop(key)
            size = sum(t.numel() * t.element_size() for t in [*teacher.parameters(), *teacher.buffers()])
            log.info(f"step {step}: released teacher '{key}' ({size / BYTES_PER_MB:.1f} MB of weights)")
            del teacher
        self._requests = self._teacher_requests()
        gc.collect()
        if not self.active:
            log.info(f"step {step}: Phase II: denoising loss only, no teacher, no capture")

    # --- checkpoints -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The active alignments' states (their heads), by label."""
        return {label: alignment.state_dict() for label, alignment in self.modules().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for label, alignment in self.modules().items():
            alignment.load_state_dict(state[label])

    # --- derived -----------------------------------------------------------------------------------------------------

    def _needed_teachers(self) -> list[str]:
        return sorted({self.nodes[label].teacher for label in self.active})

    def _teacher_requests(self) -> dict[str, Capture]:
        """Per teacher, the union of what its active alignments need (worked out once per phase)."""
        requests = {key: Capture() for key in self.teachers}
        for label in self.active:
            key = self.nodes[label].teacher
            requests[key] = requests[key] | self.alignments[label].teacher_request()
        return requests


def drop_param_group(optimizer: torch.optim.Optimizer, name: str) -> None:
    """Remove the param group called ``name`` and the optimiser state of its parameters."""
    for index, group in enumerate(optimizer.param_groups):
        if group.get("name") == name:
            for param in group["params"]:
                optimizer.state.pop(param, None)
            del optimizer.param_groups[index]
            return
