"""Which alignments are still active, and the termination policies that will stop them.

The run-wide ``termination`` policy governs every alignment without its own; an alignment's own policy
governs only it (staggered stops). A policy fires at most once. Phase II starts when the last alignment stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from haste_core.interfaces import Termination
from haste_core.recipe import Recipe

RUN_POLICY = "run"


@dataclass(frozen=True)
class Stop:
    """One alignment stopping: its label, the last aligned step, and the policy's reason."""

    alignment: str
    step: int
    reason: str


class PhasePlan:
    def __init__(self, recipe: Recipe) -> None:
        self.labels = [node.label for node in recipe.alignments]
        self.policies: dict[str, Termination] = {}
        self.targets: dict[str, list[str]] = {}
        shared = [node.label for node in recipe.alignments if node.termination is None]
        if shared:
            self.policies[RUN_POLICY] = recipe.termination.build()
            self.targets[RUN_POLICY] = shared
        for node in recipe.alignments:
            if node.termination is not None:
                self.policies[node.label] = node.termination.build()
                self.targets[node.label] = [node.label]
        self.fired: dict[str, int] = {}  # policy key -> step it fired at
        self.stopped: dict[str, int] = {}  # alignment label -> last aligned step

    @property
    def active(self) -> list[str]:
        """Labels of the alignments still trained, in recipe order."""
        return [label for label in self.labels if label not in self.stopped]

    def update(self, step: int, metrics: dict[str, Tensor]) -> list[Stop]:
        """Consult every policy that still has active alignments; return the alignments that stop now."""
        stops = []
        for key, policy in self.policies.items():
            if key in self.fired:
                continue
            fired = policy.update(step, metrics)
            if fired is None:
                continue
            self.fired[key] = step
            for label in self.targets[key]:
                if label not in self.stopped:
                    self.stopped[label] = step
                    stops.append(Stop(alignment=label, step=step, reason=fired.reason))
        return stops

    def state_dict(self) -> dict[str, Any]:
        return {
            "fired": dict(self.fired),
            "stopped": dict(self.stopped),
            "policies": {key: policy.state_dict() for key, policy in self.policies.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fired = {str(k): int(v) for k, v in state["fired"].items()}
        self.stopped = {str(k): int(v) for k, v in state["stopped"].items() if k in self.labels}
        for key, policy_state in state["policies"].items():
            if key in self.policies:
                self.policies[key].load_state_dict(policy_state)
