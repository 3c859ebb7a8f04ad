"""The metric names a termination policy is given, and the check of the names a policy reads by name.

``Termination.update`` gets every step's ``loss/denoise``, ``loss/total``, and for each active alignment
``align/<label>`` and its extra metrics ``align/<label>/<key>`` (``haste_core.train.train_step`` makes them). A
policy that reads one by name (a ``metric`` setting) gives it in ``metrics_read`` (setting -> name); the recipe
loader calls ``check_metrics_read`` so that a misspelt name fails at ``haste check``, before a run starts. A policy
may read the terms of the alignments it governs (or watches) only: another one's may stop first.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from haste_core.errors import RecipeError

TRAINING_LOSSES = ("loss/denoise", "loss/total")


def policy_metrics(labels: Sequence[str]) -> list[str]:
    """The metric names every step gives a policy governing the alignments ``labels`` (extra metrics aside)."""
    return [*TRAINING_LOSSES, *(f"align/{label}" for label in labels)]


def is_policy_metric(name: str, labels: Sequence[str]) -> bool:
    """Whether ``name`` is a loss, a governed alignment's term, or one of its extra metrics."""
    extra = any(name.startswith(f"align/{label}/") and len(name) > len(f"align/{label}/") for label in labels)
    return name in policy_metrics(labels) or extra


def check_metrics_read(policy: Any, config: Any, labels: Sequence[str]) -> None:
    """Raise ``RecipeError`` (at the setting that names it) for a metric of ``policy.metrics_read(config)`` that
    no step gives it, listing the valid names (the policy class ``policy`` governs or watches ``labels``)."""
    for setting, name in policy.metrics_read(config).items():
        if is_policy_metric(name, labels):
            continue
        valid = policy_metrics(labels)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        extra = f", or align/<label>/<key> for an extra metric of {', '.join(labels)}" if labels else ""
        raise RecipeError(
            f"metric {name!r} is not a value this policy is given{hint}; the valid metric names are "
            f"{', '.join(valid)}{extra}",
            setting,
        )
