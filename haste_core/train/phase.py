"""Which alignments are still active, the termination policies that will stop them, and the watching ones.

The run-wide ``termination`` policy governs every alignment without its own; an alignment's own policy
governs only it (staggered stops). A policy fires at most once. Phase II starts when the last alignment stops.

``termination.watch`` policies observe every alignment and never act: the step at which each would have fired
is recorded once (``termination/would_fire/<name>``), their weight scales are ignored, and they are consulted
only while some alignment is active. All policy state, watching included, goes into checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from haste_core.config.recipe import Recipe
from haste_core.interfaces import PolicyContext, Termination

RUN_POLICY = "run"


@dataclass(frozen=True)
class Stop:
    """One alignment stopping: its label, the last aligned step, and the policy's reason."""

    alignment: str
    step: int
    reason: str


@dataclass(frozen=True)
class WouldFire:
    """A watching policy that would have stopped the alignments after ``step``."""

    name: str
    step: int
    reason: str


class PhasePlan:
    """The termination policies of a run, what each governs, and which alignments they have stopped."""

    def __init__(self, recipe: Recipe) -> None:
        context = PolicyContext(
            max_steps=recipe.run.max_steps,
            steps_per_epoch=recipe.data_spec.num_items // recipe.data.global_batch_size,  # the data stream's epoch
        )
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
        for key, policy in self.policies.items():
            policy.bind(self.targets[key], context)
        self.watch: dict[str, Termination] = {}
        for name, node in zip(recipe.watch_names, recipe.watch, strict=True):
            self.watch[name] = node.build()
            self.watch[name].bind(self.labels, context)
        self.fired: dict[str, int] = {}  # policy key -> step it fired at
        self.stopped: dict[str, int] = {}  # alignment label -> last aligned step
        self.would_fire: dict[str, int] = {}  # watch name -> step it would have fired at
        self.unlogged: dict[str, int] = {}  # would-fire steps not yet written to the logs
        self.watched_now: list[WouldFire] = []  # what the last update recorded

    @property
    def active(self) -> list[str]:
        """Labels of the alignments still trained, in recipe order."""
        return [label for label in self.labels if label not in self.stopped]

    def _governing(self) -> dict[str, Termination]:
        return {key: policy for key, policy in self.policies.items() if key not in self.fired}

    def _watching(self) -> dict[str, Termination]:
        if not self.active:
            return {}
        return {name: policy for name, policy in self.watch.items() if name not in self.would_fire}

    def _probe_intervals(self) -> list[int]:
        policies = [*self._governing().values(), *self._watching().values()]
        return [policy.probe_every for policy in policies if policy.probe_every > 0]

    def probe_every(self) -> int:
        """A probe interval that gives every undecided policy (governing or watching) each of its own probe steps:
        the greatest common divisor of their intervals (equal intervals: that interval); 0: none asks."""
        return math.gcd(*self._probe_intervals())

    def probe_due(self, step: int) -> bool:
        """Whether some undecided policy wants the probe at ``step`` (a multiple of its own interval)."""
        return any(step % every == 0 for every in self._probe_intervals())

    def weight_scales(self, step: int) -> dict[str, float]:
        """The factor on each active alignment's weight for ``step``, from the policy that governs it."""
        scales = {}
        for key, policy in self._governing().items():
            scale = policy.weight_scale(step)
            for label in self.targets[key]:
                if label not in self.stopped:
                    scales[label] = scale
        return scales

    def update(self, step: int, metrics: dict[str, Tensor]) -> list[Stop]:
        """Consult every policy that still has active alignments; return the alignments that stop now.

        Watching policies are consulted first (while alignments are active); what they record is in
        ``watched_now`` and, until ``take_unlogged`` is called, in ``unlogged``.
        """
        self.watched_now = []
        for name, policy in self._watching().items():
            fired = policy.update(step, metrics)
            if fired is not None:
                self.would_fire[name] = self.unlogged[name] = step
                self.watched_now.append(WouldFire(name=name, step=step, reason=fired.reason))
        stops = []
        for key, policy in self._governing().items():
            fired = policy.update(step, metrics)
            if fired is None:
                continue
            self.fired[key] = step
            for label in self.targets[key]:
                if label not in self.stopped:
                    self.stopped[label] = step
                    stops.append(Stop(alignment=label, step=step, reason=fired.reason))
        return stops

    def stop_all(self, step: int, reason: str) -> list[Stop]:
        """Stop every active alignment after ``step`` as a policy firing there would (a forked run, whose parent
        aligned on): every undecided policy counts as fired at ``step``."""
        for key in self._governing():
            self.fired[key] = step
        stops = [Stop(alignment=label, step=step, reason=reason) for label in self.active]
        for stop in stops:
            self.stopped[stop.alignment] = step
        return stops

    def take_unlogged(self) -> dict[str, int]:
        """Would-fire steps not logged yet (each is handed out once)."""
        out, self.unlogged = self.unlogged, {}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "fired": dict(self.fired),
            "stopped": dict(self.stopped),
            "policies": {key: policy.state_dict() for key, policy in self.policies.items()},
            "watch": {name: policy.state_dict() for name, policy in self.watch.items()},
            "would_fire": dict(self.would_fire),
            "unlogged": dict(self.unlogged),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fired = {str(k): int(v) for k, v in state["fired"].items()}
        self.stopped = {str(k): int(v) for k, v in state["stopped"].items() if k in self.labels}
        for key, policy_state in state["policies"].items():
            if key in self.policies:
                self.policies[key].load_state_dict(policy_state)
        for name, policy_state in state.get("watch", {}).items():
            if name in self.watch:
                self.watch[name].load_state_dict(policy_state)
        self.would_fire = {str(k): int(v) for k, v in state.get("would_fire", {}).items() if k in self.watch}
        self.unlogged = {str(k): int(v) for k, v in state.get("unlogged", {}).items() if k in self.watch}
