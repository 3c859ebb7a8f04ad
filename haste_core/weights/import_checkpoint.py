"""Student weights from published checkpoints: REPA/HASTE training checkpoints, official DiT, and our own runs.

Layouts understood by ``read_checkpoint``:

* ``repa``: what the REPA and HASTE training scripts save, a dict with ``model``, ``ema``, ``opt``, ``args``
  (an argparse Namespace) and ``steps``. Backbone keys are named as ours (``x_embedder.proj.*``,
  ``blocks.{i}.attn.qkv.*``...); an alignment's heads sit beside them under the prefix its class declares
  (``Alignment.published_prefix``; REPA's projector: ``projectors.0.``).
* ``dit``: the official DiT checkpoints, a plain state dict (EMA weights) with the same backbone names and
  learned-sigma output channels.
* ``haste``: a checkpoint of one of our runs (``student``, ``ema`` and ``alignments`` by label).

The reference MMDiT (``models/mmdit.py`` of REPA/HASTE, the COCO experiments) is saved in the ``repa`` layout with
its own key names; the student class translates them (``Student.from_published``), and ``export_reference``
(``haste_core.weights.export``) writes ours back into the reference layouts.

Loading is strict: every key of the student must be present with the student's shape. A mismatch fails with
the first mismatching key (in the student's own order) and both shapes.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from haste_core.errors import CheckpointError
from haste_core.interfaces import Alignment
from haste_core.registry import Registry
from haste_core.weights import checkpoint as run_checkpoint
from haste_core.weights.hub import check_fits

Heads = dict[str, dict[str, Tensor]]  # published prefix (or, for our own runs, alignment label) -> its tensors


@dataclass
class PublishedCheckpoint:
    """The student weights of a checkpoint, ``model`` (live) and ``ema`` (None if the file has none), and the
    alignment heads stored beside them (``heads``/``ema_heads``: by published prefix, or by label for ours)."""

    path: Path
    layout: Literal["repa", "dit", "haste"]
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    heads: Heads = field(default_factory=dict)
    ema_heads: Heads = field(default_factory=dict)
    student_name: str | None = None

    def weights(self, which: Literal["ema", "model"]) -> dict[str, Tensor]:
        """EMA weights (or the live ones when the file has no EMA), or the live weights."""
        return self.ema if which == "ema" and self.ema is not None else self.model

    def head_states(self, which: Literal["ema", "model"]) -> Heads:
        return self.ema_heads if which == "ema" and self.ema is not None else self.heads


def head_prefixes(alignments: Registry) -> list[str]:
    """The prefixes under which the registered alignments' heads appear in published checkpoints."""
    return sorted({entry.cls.published_prefix for entry in alignments.entries() if entry.cls.published_prefix})


def read_checkpoint(path: str | Path, alignments: Registry | Iterable[str] = ()) -> PublishedCheckpoint:
    """Read a checkpoint file in any layout above (weights only; REPA's argparse ``args`` is allowed).

    ``alignments`` (the alignment registry, or the prefixes themselves) tells which tensors of a published file
    are alignment heads rather than the student's."""
    prefixes = head_prefixes(alignments) if isinstance(alignments, Registry) else sorted(alignments)
    path = Path(path)
    raw = run_checkpoint.load(path) if run_checkpoint.is_sharded(path) else _read_file(path)  # FSDP2 runs: a folder
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}; expected a dict of weights")
    if raw.get("format") == run_checkpoint.FORMAT:
        heads = {str(label): dict(state) for label, state in (raw.get("alignments") or {}).items()}
        name = ((raw.get("recipe") or {}).get("student") or {}).get("name")
        return PublishedCheckpoint(path, "haste", raw["student"], raw["ema"], heads, heads, student_name=name)
    if "model" in raw and isinstance(raw["model"], dict):
        model, heads = split_heads(raw["model"], prefixes)
        ema, ema_heads = split_heads(raw["ema"], prefixes) if isinstance(raw.get("ema"), dict) else (None, {})
        return PublishedCheckpoint(path, "repa", model, ema, heads, ema_heads)
    if raw and all(isinstance(value, Tensor) for value in raw.values()):
        model, heads = split_heads(raw, prefixes)
        return PublishedCheckpoint(path, "dit", model, None, heads, heads)
    raise CheckpointError(
        f"{path} is not a checkpoint haste can read: expected a REPA/HASTE training checkpoint (keys model, ema, "
        f"opt, args, steps), a plain state dict (official DiT) or a haste run checkpoint; found keys "
        f"{sorted(map(str, raw))[:8]}"
    )


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # memory-mapped when the file allows it (torch's zip format): a REPA checkpoint also holds the optimiser
            # state, and under torchrun every rank reads the file; only the weights used are then paged in
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: truncated, or not a file torch.load reads "
            "with weights_only=True); give a REPA/HASTE/DiT checkpoint or a haste .pt file"
        ) from None


def split_heads(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> tuple[dict[str, Tensor], Heads]:
    """A published state dict as (the student's tensors, {prefix: the tensors under it, prefix removed})."""
    prefixes = list(prefixes)
    heads: Heads = {prefix: {} for prefix in prefixes}
    student = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            student[key] = value
        else:
            heads[prefix][key[len(prefix) :]] = value
    return student, {prefix: tensors for prefix, tensors in heads.items() if tensors}


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
    alignments: Mapping[str, Alignment] | None = None,
    name: str | None = None,
    supply: Mapping[str, Tensor] | None = None,
) -> PublishedCheckpoint:
    """Load a published checkpoint's student weights into ``student`` (EMA by default), and into each of
    ``alignments`` (by label) the heads the file holds for it: for our runs the state of the alignment with the
    same label; for REPA/HASTE files the tensors under its class's ``published_prefix``, each prefix given to the
    first alignment that declares it. ``name`` (e.g. ``sit_xl_2``) is used in error messages.

    A published file's student tensors are renamed by the student class (``Student.from_published``: the reference
    MMDiT's ``joint_blocks.*`` become our ``blocks.*``); ``supply`` gives the student tensors such a layout lacks
    (for the reference MMDiT ``null_text``: the empty caption's embedding, e.g. ``Coco.null_caption()["text"]``, which
    the reference uses as its null caption). Loading stays strict."""
    alignments = alignments or {}
    if isinstance(source, PublishedCheckpoint):
        checkpoint = source
    else:
        checkpoint = read_checkpoint(source, {type(a).published_prefix for a in alignments.values()} - {""})
    target = name or type(student).__name__
    student_state = checkpoint.weights(weights)
    if checkpoint.layout != "haste":
        student_state = type(student).from_published(student_state)
    load_weights(student, {**student_state, **(supply or {})}, source=checkpoint.path, target=target)
    heads = dict(checkpoint.head_states(weights))
    for label, alignment in alignments.items():
        if checkpoint.layout == "haste":
            state = heads.pop(label, None)
        else:
            state = heads.pop(type(alignment).published_prefix, None)
            state = None if state is None else type(alignment).from_published(state)
        if state is not None:
            load_weights(alignment, state, source=checkpoint.path, target=f"alignment '{label}'")
    return checkpoint
