"""Forked runs: a run that starts from another run's checkpoint at step K and stops aligning there.

A termination sweep trains one aligned parent and forks it at each K. A branch's folder holds ``fork.yaml``
(the parent checkpoint's path and K) instead of a copy of that checkpoint. Its first start loads the parent's
state and stops every alignment after step K, exactly as a run configured with ``termination: {name:
fixed_step, step: K}`` from the start does at step K (a test checks they are equal bit for bit); from its own
first checkpoint on, a branch resumes like any run.

The branch's recipe must be the parent's except for the acting termination policies (``termination`` without
its ``watch``, and each ``alignment[i].termination``) and the settings a resume may change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from haste_core.errors import CheckpointError

FORK_FILE = "fork.yaml"


@dataclass(frozen=True)
class ForkPoint:
    """Where a branch starts: the parent's checkpoint (by path, never copied) and its step K."""

    parent: Path
    step: int


def write(run_dir: Path, parent: Path, step: int) -> None:
    """Record in ``run_dir`` that the run starts from ``parent`` (a checkpoint of step ``step``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "# haste: this run starts from another run's checkpoint and stops aligning after its step\n"
    text += yaml.safe_dump({"parent": str(Path(parent).resolve()), "step": int(step)}, sort_keys=False)
    temporary = run_dir / f".{FORK_FILE}.tmp"
    temporary.write_text(text)
    temporary.replace(run_dir / FORK_FILE)


def read(run_dir: Path) -> ForkPoint | None:
    """The fork point recorded in ``run_dir``; None for an ordinary run."""
    path = Path(run_dir) / FORK_FILE
    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("parent"), str) or not isinstance(raw.get("step"), int):
        raise CheckpointError(f"{path} must hold 'parent: <checkpoint path>' and 'step: <int>'; found {raw!r}")
    return ForkPoint(parent=Path(raw["parent"]), step=raw["step"])


def starts_from(run_dir: Path, source: Any) -> ForkPoint | None:
    """The fork point when ``source`` (the checkpoint a trainer loads) is the parent named in ``run_dir``."""
    point = read(run_dir)
    if point is None or source is None or Path(source).resolve() != point.parent.resolve():
        return None
    return point


def without_acting_policies(recipe: dict[str, Any]) -> dict[str, Any]:
    """A resolved recipe without the acting termination policies (the ``watch`` list stays): what a branch and
    its parent must share."""
    out = copy.deepcopy(recipe)
    watch = (out.pop("termination", None) or {}).get("watch")
    if watch:
        out["termination"] = {"watch": watch}
    for node in out.get("alignment") or []:
        node.pop("termination", None)
    return out


def parent_phase(phase: dict[str, Any], point: ForkPoint) -> dict[str, Any]:
    """The parent's phase state as the branch loads it: what the watching policies saw is kept, the parent's
    acting policies are dropped (the branch has its own). The parent must still be aligning everything at K."""
    if phase["stopped"]:
        stopped = ", ".join(f"{label} after step {step}" for label, step in phase["stopped"].items())
        raise CheckpointError(
            f"{point.parent} cannot be forked at step {point.step}: its run had already stopped {stopped}; fork "
            "from a run that aligns until then (termination: {name: never})"
        )
    return {**phase, "policies": {}}
