"""``plateau``: stop aligning once the alignment loss has stopped improving.

Each watched value (``metric``, or by default the loss of every alignment the policy governs, ``align/<label>``)
is smoothed by an exponential moving average (``decay``, bias-corrected) kept on the device (a ``metric`` that
disappears once its alignment has stopped is no longer checked, so the policy then never fires). Every ``window``
steps (from ``min_step`` on) the averages are read once, averaged over ranks, and compared with their values at
the previous check: the policy fires when every watched value improved (fell) by less than ``tolerance``
relative to its previous value. Use it when you do not know in advance how long alignment helps: HASTE's
observation is that the alignment terms flatten long before the denoising loss does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from haste_core import Fired, HasteError, RecipeError, Registry, Termination, all_reduce_mean, hookimpl

_TINY = 1e-12  # guards the relative change of a value that is exactly 0


class Plateau(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        metric: str = ""  # a logged value such as align/attention; empty: every governed alignment's loss
        window: int = 500  # steps between checks
        tolerance: float = 0.01  # fire when the relative improvement over a window is below this
        decay: float = 0.99  # EMA decay per step (an average over ~1/(1-decay) steps)
        min_step: int = 0  # no check before this step

        def __post_init__(self) -> None:
            if self.window < 1:
                raise RecipeError(f"must be at least 1, got {self.window}", "window")
            if self.tolerance < 0:
                raise RecipeError(f"must be 0 or more, got {self.tolerance}", "tolerance")
            if not 0.0 <= self.decay < 1.0:
                raise RecipeError(f"must be in [0, 1), got {self.decay}", "decay")

    @classmethod
    def example_config(cls, **specs: object) -> Config:
        return cls.Config(metric="loss/total", window=5, tolerance=0.05, decay=0.5)

    @classmethod
    def metrics_read(cls, config: Config) -> dict[str, str]:
        """The recipe loader checks ``metric`` against the values this policy is given."""
        return {"metric": config.metric} if config.metric else {}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.ema: dict[str, Any] = {}  # key -> device tensor (a float after load_state_dict, until next update)
        self.count: dict[str, int] = {}
        self.previous: dict[str, float] = {}  # values at the previous check

    def _keys(self, metrics: dict[str, Tensor]) -> list[str]:
        if self.config.metric:
            if self.config.metric not in metrics and self.config.metric in self.count:
                return []  # seen before: its alignment has stopped, so this value has no news any more
            if self.config.metric not in metrics:
                choices = ", ".join(sorted(key for key in metrics if key.startswith(("loss/", "align/"))))
                raise HasteError(f"plateau: metric '{self.config.metric}' is not among the training values ({choices})")
            return [self.config.metric]
        return [f"align/{label}" for label in self.terms if f"align/{label}" in metrics]

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        keys = self._keys(metrics)
        decay = self.config.decay
        for key in keys:
            value = metrics[key].detach().float()
            ema = self.ema.get(key)
            if not isinstance(ema, Tensor):
                ema = torch.tensor(0.0 if ema is None else ema, dtype=torch.float32, device=value.device)
            self.ema[key] = ema * decay + (1.0 - decay) * value
            self.count[key] = self.count.get(key, 0) + 1
        if not keys or step % self.config.window or step < self.config.min_step:
            return None
        debiased = torch.stack([self.ema[key] / (1.0 - decay ** self.count[key]) for key in keys])
        current = dict(zip(keys, all_reduce_mean(debiased).tolist(), strict=True))
        previous, self.previous = self.previous, current
        if not all(key in previous for key in keys):
            return None
        gains = {key: (previous[key] - current[key]) / max(abs(previous[key]), _TINY) for key in keys}
        if all(gain < self.config.tolerance for gain in gains.values()):
            detail = ", ".join(f"{key} {gain:+.2%}" for key, gain in gains.items())
            return Fired(
                reason=f"plateau: improvement over the last {self.config.window} steps below "
                f"{self.config.tolerance:.2%} ({detail})"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": {key: float(value) for key, value in self.ema.items()},
            "count": dict(self.count),
            "previous": dict(self.previous),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = {str(k): float(v) for k, v in state["ema"].items()}
        self.count = {str(k): int(v) for k, v in state["count"].items()}
        self.previous = {str(k): float(v) for k, v in state["previous"].items()}


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("plateau", Plateau)
