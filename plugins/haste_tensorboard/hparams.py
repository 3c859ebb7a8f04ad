"""The settings a run is compared by in TensorBoard's HParams tab: run name, student, teachers, each alignment's
weight, and the termination policies (the run's and each alignment's own), as flat ``name -> value`` pairs."""

from __future__ import annotations

import json
from typing import Any

# The final values of these scalars are the HParams tab's metrics (TensorBoard reads them from the scalar tags).
METRICS = ("loss/total", "loss/denoise")


def policy_text(node: Any) -> str:
    """A termination node in one short string: ``fixed_step {"step": 1000}``."""
    if node is None:
        return "none"
    settings = {key: value for key, value in node.to_dict().items() if key != "name"}
    return f"{node.name} {json.dumps(settings, default=str, sort_keys=True)}" if settings else node.name


def hparams(recipe: Any) -> dict[str, str | float | int]:
    """The comparable settings of ``recipe``."""
    values: dict[str, str | float | int] = {
        "run/name": recipe.run.name,
        "student": recipe.student.name,
        "data": recipe.data.name,
        "global_batch_size": recipe.data.global_batch_size,
        "lr": recipe.optimizer.lr,
        "termination": policy_text(recipe.termination),
    }
    for key, teacher in recipe.teachers.items():
        values["teacher" if len(recipe.teachers) == 1 else f"teacher/{key}"] = teacher.name
    for node in recipe.alignments:
        values[f"alignment/{node.label}/weight"] = node.weight
        if node.termination is not None:
            values[f"alignment/{node.label}/termination"] = policy_text(node.termination)
    return values
