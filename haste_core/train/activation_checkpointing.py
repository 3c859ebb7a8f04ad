"""Activation checkpointing per student block: the chosen blocks keep only their inputs in the forward and
recompute their activations in the backward (``torch.utils.checkpoint``, non-reentrant, RNG state restored), so a
larger batch fits at about a third more compute for those blocks.

The student's blocks are its ``blocks`` list (``nn.ModuleList``), which every built-in student has. A block's
``forward`` is replaced on the instance, so parameter names and checkpoints are unchanged, and a block whose
attention is captured recomputes its logits too (the captured tensors the alignments read are the forward's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from haste_core.errors import RecipeError


def checkpointed_blocks(depth: int, every: int) -> list[int]:
    """The blocks recomputed for ``activation_checkpointing.every``: none (0), all (1), or 0, k, 2k, ... (k)."""
    return list(range(0, depth, every)) if every else []


def _recomputing(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # sampling, evaluation, the FLOP count: nothing to save memory for
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply(student: nn.Module, every: int, name: str) -> list[int]:
    """Checkpoint the chosen blocks of ``student`` in place; returns their indices."""
    if not every:
        return []
    blocks = getattr(student, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise RecipeError(
            f"student {name} has no 'blocks' list to checkpoint; set activation_checkpointing.every=0",
            "activation_checkpointing.every",
        )
    chosen = checkpointed_blocks(len(blocks), every)
    for index in chosen:
        blocks[index].forward = _recomputing(blocks[index].forward)
    return chosen
