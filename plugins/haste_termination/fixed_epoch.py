"""``fixed_epoch``: stop aligning after a fixed number of passes over the training set.

``epochs: E`` fires after the optimiser step that completes the E-th epoch (the trainer passes the completed
epochs as ``data/epoch``). Use it when a schedule is stated in epochs (HASTE's 500-epoch run) and the batch
size may change between runs: the termination point then moves with the data, not with the step count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from haste_core import hookimpl
from haste_core.errors import HasteError, RecipeError
from haste_core.interfaces import Fired, Termination
from haste_core.registry import Registry

EPOCH_KEY = "data/epoch"


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

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        if EPOCH_KEY not in metrics:
            raise HasteError(
                f"fixed_epoch needs '{EPOCH_KEY}' (completed epochs) among the values it is given; the haste "
                "trainer passes it at every step"
            )
        done = metrics[EPOCH_KEY]
        # The goal rounded like the value it is compared with (a float32 7/10 is below the float64 0.7); rounding
        # is monotone, so a position at or past the goal still reads at or past it.
        goal = torch.tensor(self.config.epochs, dtype=done.dtype)
        if bool(done.cpu() >= goal):
            return Fired(reason=f"fixed_epoch: {self.config.epochs:g} epochs done at step {step}")
        return None


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("fixed_epoch", FixedEpoch)
