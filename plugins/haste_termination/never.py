"""``never``: alignment for the whole run (REPA)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from haste_core import Fired, Registry, Termination, hookimpl


class Never(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        pass

    def update(self, step: int, metrics: dict[str, Tensor]) -> Fired | None:
        return None


@hookimpl
def haste_register_terminations(registry: Registry) -> None:
    registry.add("never", Never)
