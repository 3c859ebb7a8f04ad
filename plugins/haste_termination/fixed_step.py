"""``fixed_step``: HASTE's stage-wise termination at a fixed optimiser step.

``step: S`` means the first S optimiser steps are aligned and step S+1 is the first denoising-only step
(HASTE's SiT-XL/2 run: 250,000).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from haste_core import Fired, RecipeError, Registry, Termination, hookimpl


class FixedStep(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        step: int  # the number of aligned optimiser steps

        def __post_init__(self) -> None:
            if self.step < 1:
                raise RecipeError(
                    f"must be at least 1, got {self.step}; for no alignment at all, leave the alignment out",
                    "step",
                )

    @classmethod
    def example_config(cls, **specs: object) -> Config:
        return cls.Config(step=3)

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        if step >= self.config.step:
            return Fired(reason=f"fixed_step: {self.config.step} aligned steps done")
        return None


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("fixed_step", FixedStep)
