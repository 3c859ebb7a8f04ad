"""Export EMA student weights as safetensors (``haste export RUN_OR_CKPT out.safetensors``).

The source is a run folder (its ``checkpoints/latest.pt`` is used), a haste checkpoint, or a REPA/HASTE/DiT
checkpoint (``haste_core.weights.import_checkpoint.read_checkpoint``). Only the student's EMA weights are written
(no optimiser, no projector, no teacher), with the source and student name in the file's metadata; they load
back with ``safetensors.torch.load_file`` and ``student.load_state_dict``. ``export_reference`` writes instead
the reference code's own layouts (``haste export RUN out.pt --layout repa|dit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from haste_core.errors import HasteError
from haste_core.weights import checkpoint
from haste_core.weights.import_checkpoint import read_checkpoint

EXPORT_FORMAT = "haste-student/1"


def export(source: str | Path, out: str | Path, head_prefixes: Iterable[str] = ()) -> Path:
    """Write the EMA student weights of ``source`` (run folder or checkpoint file) to ``out``; returns ``out``.
    ``head_prefixes``: where a published file keeps alignment heads (left out; ``import_checkpoint.head_prefixes``)."""
    from safetensors.torch import save_file

    source, out = _checkpoint_file(Path(source)), Path(out)
    if out.suffix != ".safetensors":
        raise HasteError(f"the output must be a .safetensors file, got {out}")
    published = read_checkpoint(source, head_prefixes)
    weights = {key: value.contiguous() for key, value in published.weights("ema").items()}
    metadata = {"format": EXPORT_FORMAT, "source": str(source), "layout": published.layout}
    if published.student_name:
        metadata["student"] = published.student_name
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    save_file(weights, str(temporary), metadata=metadata)
    temporary.replace(out)
    return out


REFERENCE_LAYOUTS = ("repa", "dit")


def export_reference(source: str | Path, out: str | Path, layout: str, local_plugins: Sequence[str] = ()) -> Path:
    """Write a haste run's student in a reference code's layout, so that the reference's own ``generate.py`` loads
    it (strictly): ``repa``, what REPA's/HASTE's ``train.py`` saves (``model``, ``ema``, ``steps``; each with the
    alignment heads the reference keeps beside the backbone, e.g. REPA's projector as ``projectors.0.*``, when the
    checkpoint still holds them), or ``dit``, the official DiT/SiT release (a plain state dict of the EMA weights).
    Keys are translated by the student class (``Student.to_published``; the MMDiT's ``blocks.*`` become
    ``joint_blocks.*``); ``import_checkpoint`` reads the file back exactly."""
    import torch

    from haste_core.weights.checkpoint_recipe import checkpoint_recipe

    source, out = _checkpoint_file(Path(source)), Path(out)
    if layout not in REFERENCE_LAYOUTS:
        raise HasteError(f"unknown reference layout {layout!r}; choose one of {', '.join(REFERENCE_LAYOUTS)}")
    if out.suffix != ".pt":
        raise HasteError(f"a reference-layout checkpoint is a .pt file, got {out}")
    raw = checkpoint.load(source)  # a haste run checkpoint (a published file already is in a reference layout)
    recipe, _ = checkpoint_recipe(raw, source, local_plugins)  # never the plugin files the checkpoint names
    student = recipe.student.entry.cls
    heads = {}
    for node in recipe.alignments:
        kind, state = node.entry.cls, (raw.get("alignments") or {}).get(node.label)
        if kind.published_prefix and state is not None and not any(k.startswith(kind.published_prefix) for k in heads):
            heads |= {kind.published_prefix + key: value for key, value in kind.to_published(state).items()}
    if layout == "dit":
        payload: dict = student.to_published(raw["ema"])
    else:
        payload = {"model": {**student.to_published(raw["student"]), **heads},
                   "ema": {**student.to_published(raw["ema"]), **heads}, "steps": int(raw["step"])}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    torch.save(payload, temporary)
    temporary.replace(out)
    return out


def _checkpoint_file(source: Path) -> Path:
    """``source`` itself, or a run folder's latest checkpoint."""
    if not source.is_dir() or checkpoint.is_sharded(source):
        return source
    latest = checkpoint.latest_path(source)
    if not latest.exists():
        raise HasteError(f"{source} is a folder without {latest.relative_to(source)}; is it a run folder?")
    return latest
