"""``gradient_conflict``: stop aligning once the alignment gradient keeps pulling against denoising.

Every ``every`` steps the trainer's gradient probe (``haste_core.train.probe``) measures, on the student parameters
both losses reach, the cosine between the gradient of the denoising loss and the summed (weighted) gradient of
the alignments this policy governs. Once the cosine stays below ``threshold`` for ``patience`` measurements in
a row (from ``min_step`` on), the policy fires: alignment has become the "straitjacket" HASTE describes. A
probe costs about one extra forward and (terms + 1) backward passes, so it is paid once every ``every`` steps;
the trainer logs its time as ``perf/probe_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from haste_core import Fired, RecipeError, Registry, Termination, conflict_cosine, hookimpl


class GradientConflict(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        every: int = 100  # steps between measurements
        threshold: float = 0.0  # a cosine below this counts as conflict (0: the gradients oppose)
        patience: int = 3  # consecutive conflicting measurements before firing
        min_step: int = 0  # measurements before this step never count

        def __post_init__(self) -> None:
            if self.every < 1:
                raise RecipeError(f"must be at least 1, got {self.every}", "every")
            if self.patience < 1:
                raise RecipeError(f"must be at least 1, got {self.patience}", "patience")
            if not -1.0 <= self.threshold <= 1.0:
                raise RecipeError(f"a cosine threshold must be in [-1, 1], got {self.threshold}", "threshold")

    @classmethod
    def example_config(cls, **specs: object) -> Config:
        return cls.Config(every=2, patience=2)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.strikes = 0
        self.cosines: list[tuple[int, float]] = []  # (step, cosine) of every measurement

    @property
    def probe_every(self) -> int:  # type: ignore[override]
        return self.config.every

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        if step % self.config.every:
            return None  # a probe another policy asked for: this one measures every `every` steps only
        cosine = conflict_cosine(metrics, self.terms)
        if cosine is None:
            return None
        self.cosines.append((step, cosine))
        conflict = step >= self.config.min_step and cosine < self.config.threshold
        self.strikes = self.strikes + 1 if conflict else 0
        if self.strikes >= self.config.patience:
            return Fired(
                reason=f"gradient_conflict: cosine(denoise, alignment) below {self.config.threshold:g} for "
                f"{self.strikes} measurements (last {cosine:+.3f})"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"strikes": self.strikes, "cosines": [list(item) for item in self.cosines]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strikes = int(state["strikes"])
        self.cosines = [(int(step), float(cosine)) for step, cosine in state["cosines"]]


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("gradient_conflict", GradientConflict)
