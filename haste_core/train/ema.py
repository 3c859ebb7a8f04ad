"""Exponential moving average of the student's weights, updated with one fused ``foreach`` call per step."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """``ema ← decay·ema + (1−decay)·θ`` over all student parameters; buffers are copied.

    The EMA model is a separate copy in eval mode without gradients; sample from it, not from the live model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = (list(self.model.parameters()), list(model.parameters()))
        self._buffers = (
            [b for b in self.model.buffers() if b.is_floating_point()],
            [b for b in model.buffers() if b.is_floating_point()],
        )

    @torch.no_grad()
    def update(self) -> None:
        """One step towards the weights of the model given at construction."""
        torch._foreach_lerp_(*self._pairs, 1.0 - self.decay)
        if self._buffers[0]:
            torch._foreach_copy_(*self._buffers)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
