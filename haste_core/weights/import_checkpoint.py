"""Student weights from published checkpoints: REPA/HASTE training checkpoints, official DiT, and our own runs.

Layouts understood by ``read_checkpoint``:

* ``repa``: what the REPA and HASTE training scripts save, a dict with ``model``, ``ema``, ``opt``, ``args``
  (an argparse Namespace) and ``steps``. Backbone keys are named as ours (``x_embedder.proj.*``,
  ``blocks.{i}.attn.qkv.*``...); the projector ``projectors.0.{0,2,4}.*`` maps to the ``repa`` alignment's
  ``projector.{0,2,4}.*``.
* ``dit``: the official DiT checkpoints, a plain state dict (EMA weights) with the same backbone names and
  learned-sigma output channels.
* ``haste``: a checkpoint of one of our runs (``student``, ``ema`` and ``alignments``).

Loading is strict: every key of the student must be present with the student's shape. A mismatch fails with
the first mismatching key (in the student's own order) and both shapes.
"""

from __future__ import annotations

import argparse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from haste_core.errors import CheckpointError
from haste_core.weights.checkpoint import FORMAT as HASTE_FORMAT
from haste_core.weights.hub import check_fits

REPA_PROJECTOR = "projectors.0."  # REPA/HASTE: one projector per teacher; the first one is the repa alignment's
OUR_PROJECTOR = "projector."  # haste_alignment.repa keeps its MLP under this name


@dataclass
class PublishedCheckpoint:
    """The student weights of a checkpoint: ``model`` (live), ``ema`` (None if the file has none), and the
    repa projector under our key names (empty if none)."""

    path: Path
    layout: Literal["repa", "dit", "haste"]
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    projector: dict[str, Tensor] = field(default_factory=dict)
    ema_projector: dict[str, Tensor] = field(default_factory=dict)
    student_name: str | None = None

    def weights(self, which: Literal["ema", "model"]) -> dict[str, Tensor]:
        """EMA weights (or the live ones when the file has no EMA), or the live weights."""
        return self.ema if which == "ema" and self.ema is not None else self.model


def read_checkpoint(path: str | Path) -> PublishedCheckpoint:
    """Read a checkpoint file in any layout above (weights only; REPA's argparse ``args`` is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # memory-mapped when the file allows it (torch's zip format): a REPA checkpoint also holds the optimiser
            # state, and under torchrun every rank reads the file; only the weights used are then paged in
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}; expected a dict of weights")
    if raw.get("format") == HASTE_FORMAT:
        recipe = raw.get("recipe") or {}
        projector = _first_repa_state(raw.get("alignments") or {}, recipe)
        return PublishedCheckpoint(
            path, "haste", raw["student"], raw["ema"], dict(projector), dict(projector),
            student_name=(recipe.get("student") or {}).get("name"),
        )  # fmt: skip
    if "model" in raw and isinstance(raw["model"], dict):
        model, projector = _split_projector(raw["model"])
        ema, ema_projector = _split_projector(raw["ema"]) if isinstance(raw.get("ema"), dict) else (None, {})
        return PublishedCheckpoint(path, "repa", model, ema, projector, ema_projector)
    if raw and all(isinstance(value, Tensor) for value in raw.values()):
        model, projector = _split_projector(raw)
        return PublishedCheckpoint(path, "dit", model, None, projector, projector)
    raise CheckpointError(
        f"{path} is not a checkpoint haste can read: expected a REPA/HASTE training checkpoint (keys model, ema, "
        f"opt, args, steps), a plain state dict (official DiT) or a haste run checkpoint; found keys "
        f"{sorted(map(str, raw))[:8]}"
    )


def _first_repa_state(alignments: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Tensor]:
    """The state of the run's first ``repa`` alignment still in the checkpoint (labelled ``repa``, or ``repa_<i>``
    when the recipe lists several; haste_core.config.recipe's labelling rule), or {} when none is left."""
    names = [node.get("name") for node in recipe.get("alignment") or [] if isinstance(node, dict)]
    labels = [name if names.count(name) == 1 else f"{name}_{i}" for i, name in enumerate(names) if name == "repa"]
    return next((dict(alignments[label]) for label in labels if label in alignments), {})


def _split_projector(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    backbone = {k: v for k, v in state.items() if not k.startswith("projectors.")}
    projector = {OUR_PROJECTOR + k[len(REPA_PROJECTOR) :]: v for k, v in state.items() if k.startswith(REPA_PROJECTOR)}
    return backbone, projector


# load_weights' words for a checkpoint that does not fit (see haste_core.weights.hub.check_fits)
CHECKPOINT_MISFIT = {
    "missing": "key '{key}' is missing from the checkpoint",
    "shape": "'{key}' has shape {found} in the checkpoint but {wanted} in {target}",
    "extra": "the checkpoint has keys {target} lacks, first '{key}' ({count} in all); check the student name and "
    "its settings (qk_norm, learn_sigma)",
}


def load_weights(module: nn.Module, state: dict[str, Tensor], *, source: Any, target: str) -> None:
    """Copy ``state`` into ``module`` strictly; a missing, extra or mis-shaped key fails, naming the first one."""
    check_fits(module, state, source, target, error=CheckpointError, wording=CHECKPOINT_MISFIT)
    module.load_state_dict(state)


def import_checkpoint(
    source: str | Path | PublishedCheckpoint,
    student: nn.Module,
    *,
    weights: Literal["ema", "model"] = "ema",
    projector: nn.Module | None = None,
    name: str | None = None,
) -> PublishedCheckpoint:
    """Load a published checkpoint's student weights into ``student`` (EMA by default), and its REPA projector
    into ``projector`` (a ``repa`` alignment) when both are there. ``name`` (e.g. ``sit_xl_2``) is used in
    error messages. Returns what was read."""
    checkpoint = source if isinstance(source, PublishedCheckpoint) else read_checkpoint(source)
    target = name or type(student).__name__
    load_weights(student, checkpoint.weights(weights), source=checkpoint.path, target=target)
    chosen = checkpoint.ema_projector if weights == "ema" and checkpoint.ema is not None else checkpoint.projector
    if projector is not None and chosen:
        load_weights(projector, chosen, source=checkpoint.path, target="the repa projector")
    return checkpoint
