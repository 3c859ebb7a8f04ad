"""Exponential moving average of the student's weights, updated with one fused ``foreach`` call per step."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from haste_core.train.guard import local


class EMA:
    """``ema ← decay·ema + (1−decay)·θ`` over all student parameters; buffers are copied.

    The EMA model is a separate copy in eval mode without gradients; sample from it, not from the live model.
    ``ema_model``: that copy, made beforehand (``EMA.copy_of``) and sharded like the model (FSDP2), so the update
    lerps matching shards; by default a copy of ``model`` made here.
    """

    def __init__(self, model: nn.Module, decay: float, ema_model: nn.Module | None = None) -> None:
        self.decay = decay
        self.model = ema_model if ema_model is not None else self.copy_of(model)
        self._models = (self.model, model)
        # sharded (FSDP2): the local shards are taken at each update (the two models are sharded alike, and FSDP
        # may re-point a shard's storage); whole: the parameter lists, taken once
        sharded = any(local(p) is not p for p in model.parameters())
        self._pairs = None if sharded else (list(self.model.parameters()), list(model.parameters()))
        self._buffers = (
            [b for b in self.model.buffers() if b.is_floating_point()],
            [b for b in model.buffers() if b.is_floating_point()],
        )

    @staticmethod
    def copy_of(model: nn.Module) -> nn.Module:
        return copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        """One step towards the weights of the model given at construction."""
        pairs = self._pairs or tuple([local(p) for p in m.parameters()] for m in self._models)
        torch._foreach_lerp_(*pairs, 1.0 - self.decay)
        if self._buffers[0]:
            torch._foreach_copy_(*self._buffers)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
