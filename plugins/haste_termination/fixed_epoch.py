"""``fixed_epoch``: stop aligning after a fixed number of passes over the training set.

``epochs: E`` fires after the optimiser step that completes the E-th epoch: the first step s with
s / steps_per_epoch >= E, where steps_per_epoch (full global batches per pass, from the run's ``PolicyContext``)
is what the data stream takes per epoch. Use it when a schedule is stated in epochs (HASTE's 500-epoch run) and
the batch size may change between runs: the termination point then moves with the data, not with the step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from haste_core import Fired, PolicyContext, RecipeError, Registry, Termination, hookimpl

# float round-off of epochs·steps_per_epoch (0.7·10 = 7.000000000000001) must not push the goal a step later
ROUND_OFF = 1e-9


class FixedEpoch(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        epochs: float  # aligned passes over the training set; fractions allowed (0.5: half an epoch)

        def __post_init__(self) -> None:
            if self.epochs <= 0:
                raise RecipeError(f"must be positive, got {self.epochs}", "epochs")

    @classmethod
    def example_config(cls, **specs: object) -> Config:
        return cls.Config(epochs=1)

    def bind(self, labels: list[str], context: PolicyContext) -> None:
        super().bind(labels, context)
        self.goal = max(1, math.ceil(self.config.epochs * context.steps_per_epoch - ROUND_OFF))

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        if step >= self.goal:
            return Fired(reason=f"fixed_epoch: {self.config.epochs:g} epochs done at step {step}")
        return None


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("fixed_epoch", FixedEpoch)
