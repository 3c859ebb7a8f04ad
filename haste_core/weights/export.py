"""Export EMA student weights as safetensors (``haste export RUN_OR_CKPT out.safetensors``).

The source is a run folder (its ``checkpoints/latest.pt`` is used), a haste checkpoint, or a REPA/HASTE/DiT
checkpoint (``haste_core.weights.import_checkpoint.read_checkpoint``). Only the student's EMA weights are written
(no optimiser, no projector, no teacher), with the source and student name in the file's metadata; they load
back with ``safetensors.torch.load_file`` and ``student.load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from haste_core.errors import HasteError
from haste_core.weights import checkpoint
from haste_core.weights.import_checkpoint import read_checkpoint

EXPORT_FORMAT = "haste-student/1"


def export(source: str | Path, out: str | Path, head_prefixes: Iterable[str] = ()) -> Path:
    """Write the EMA student weights of ``source`` (run folder or checkpoint file) to ``out``; returns ``out``.
    ``head_prefixes``: where a published file keeps alignment heads (left out; ``import_checkpoint.head_prefixes``)."""
    from safetensors.torch import save_file

    source, out = Path(source), Path(out)
    if source.is_dir():
        latest = checkpoint.latest_path(source)
        if not latest.is_file():
            raise HasteError(f"{source} is a folder without {latest.relative_to(source)}; is it a run folder?")
        source = latest
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
