"""``loss_target``: stop aligning once an alignment term has stayed below a target for a while.

Every ``every`` steps the watched value (``metric``, or by default the term of every alignment the policy
governs, ``align/<label>``) is read once and averaged over processes, so every process decides alike; after
``patience`` readings in a row below ``target`` the policy fires. Reading only every ``every`` steps keeps the
device from waiting on the host at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from haste_core import Fired, RecipeError, Registry, Termination, all_reduce_mean, hookimpl


class LossTarget(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        target: float  # fire once the value stays below this
        metric: str = ""  # a value such as align/token_relation; empty: every governed alignment's term
        every: int = 100  # steps between readings
        patience: int = 3  # readings in a row below the target

        def __post_init__(self) -> None:
            if self.every < 1:
                raise RecipeError(f"must be at least 1, got {self.every}", "every")
            if self.patience < 1:
                raise RecipeError(f"must be at least 1, got {self.patience}", "patience")

    @classmethod
    def example_config(cls, **specs: Any) -> Config:
        return cls.Config(target=0.0, every=100, patience=2)

    @classmethod
    def metrics_read(cls, config: Config) -> dict[str, str]:
        # `haste check` refuses a metric that no step gives this policy, listing the valid names
        return {"metric": config.metric} if config.metric else {}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.below = 0  # readings in a row below the target

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        if step % self.config.every:
            return None
        keys = [self.config.metric] if self.config.metric else [f"align/{label}" for label in self.terms]
        values = torch.stack([metrics[key].detach().float() for key in keys])
        worst = all_reduce_mean(values).max().item()  # one device sync every `every` steps
        self.below = self.below + 1 if worst < self.config.target else 0
        if self.below >= self.config.patience:
            return Fired(f"loss_target: {', '.join(keys)} below {self.config.target:g} for {self.below} readings")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"below": self.below}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.below = int(state["below"])


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("loss_target", LossTarget)
