"""``fade``: ramp an alignment's weight down to zero, then terminate it (the soft alternative to a hard stop).

Steps 1..``start`` train at the full recipe weight. Over the next ``steps`` steps the weight falls along
``shape`` (``linear``, or ``cosine``: slow at both ends); step ``start + k`` trains at scale s(k/steps) with
s(0) = 1 and s(1) = 0. The policy fires after step ``start + steps − 1``, the last step with a positive weight,
so step ``start + steps`` is the first of Phase II. Use it when a hard stop shows a jump in the denoising loss
or the samples; attach it to one alignment (``alignment[i].termination``) to fade that term alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from haste_core import Fired, RecipeError, Registry, Termination, hookimpl


def ramp(fraction: float, shape: str) -> float:
    """The weight scale at ``fraction`` ∈ [0, 1] of the ramp: 1 at 0, 0 at 1."""
    fraction = min(max(fraction, 0.0), 1.0)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * fraction))
    return 1.0 - fraction


class Fade(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        start: int  # the last step at full weight
        steps: int  # length of the ramp in steps
        shape: Literal["linear", "cosine"] = "linear"

        def __post_init__(self) -> None:
            if self.start < 0:
                raise RecipeError(f"must be 0 or more, got {self.start}", "start")
            if self.steps < 1:
                raise RecipeError(f"must be at least 1, got {self.steps}; for a hard stop use fixed_step", "steps")
            if self.start + self.steps < 2:
                raise RecipeError(
                    f"start {self.start} and steps {self.steps} leave no step with a positive weight (step 1 would "
                    "train at weight 0); use start + steps ≥ 2, or leave the alignment out",
                    "steps",
                )

    @classmethod
    def example_config(cls, **specs: object) -> Config:
        return cls.Config(start=10, steps=20)

    @property
    def last_step(self) -> int:
        """The last aligned step (the one the policy fires after)."""
        return self.config.start + self.config.steps - 1

    def weight_scale(self, step: int) -> float:
        return ramp((step - self.config.start) / self.config.steps, self.config.shape)

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        if step >= self.last_step:
            return Fired(
                reason=f"fade: weight ramped to 0 ({self.config.shape}) over steps {self.config.start + 1}.."
                f"{self.config.start + self.config.steps}"
            )
        return None


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("fade", Fade)
