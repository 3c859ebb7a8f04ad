"""Checkpoints: full training state in plain dicts, written atomically, readable with ``weights_only=True``.

Layout: ``<run_dir>/checkpoints/step_<8 digits>.pt`` plus ``latest.pt`` (a hard link to the newest, replaced
atomically). A run with ``distributed.strategy: fsdp2`` writes sharded folders instead, ``step_<8 digits>.dcp/``
and ``latest.dcp`` (``haste_core.weights.sharded_checkpoint``); everything here reads both kinds. A checkpoint
is first written to a uniquely named temporary file in the same folder and then renamed, so a crash or a full
disk never leaves a truncated file under a checkpoint's name and never touches earlier checkpoints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from haste_core import distributed
from haste_core.errors import CheckpointError
from haste_core.weights import sharded_checkpoint

FORMAT = "haste-checkpoint/1"
LATEST = "latest.pt"
LATEST_SHARDED = "latest" + sharded_checkpoint.SUFFIX


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_path(run_dir: Path, step: int, sharded: bool = False) -> Path:
    suffix = sharded_checkpoint.SUFFIX if sharded else ".pt"
    return checkpoint_dir(run_dir) / f"step_{step:08d}{suffix}"


def find_step(run_dir: Path, step: int) -> Path:
    """The checkpoint of ``step`` in a run folder, of whichever kind was written (the plain name if none)."""
    sharded = step_path(run_dir, step, sharded=True)
    return sharded if sharded.exists() else step_path(run_dir, step)


def latest_path(run_dir: Path) -> Path:
    """``latest.pt``, or ``latest.dcp`` in a run folder of sharded checkpoints."""
    sharded = checkpoint_dir(run_dir) / LATEST_SHARDED
    return sharded if os.path.lexists(sharded) else checkpoint_dir(run_dir) / LATEST


def step_files(run_dir: Path) -> list[Path]:
    """The step checkpoints in a run folder (files and sharded folders), oldest first."""
    folder = checkpoint_dir(run_dir)
    return sorted([*folder.glob("step_*.pt"), *folder.glob(f"step_*{sharded_checkpoint.SUFFIX}")])


def save(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step``, point ``latest.pt`` at it, keep the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = step_path(run_dir, step)
    descriptor, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(name)  # a unique name: no other process can write to it or delete it
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as exc:  # a full or read-only disk: the earlier checkpoints are untouched
        temporary.unlink(missing_ok=True)  # a partial file must not keep the disk full
        kept = ", ".join(p.name for p in step_files(run_dir)) or "none"
        raise CheckpointError(
            f"cannot write checkpoint {target}: {(exc.strerror or str(exc)).lower()}; nothing was overwritten and "
            f"the earlier checkpoints are kept ({kept}). Free space (or write access) in {folder}, then run the "
            "same command again to resume from the last of them."
        ) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _point_latest(folder, target)
    _fsync_folder(folder)
    _rotate(run_dir, keep)
    return target


def save_sharded(tensors: dict[str, Any], meta: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Every process writes its shards of ``tensors`` as the sharded checkpoint of ``step`` (``meta``: the
    non-tensor values, the same on every rank); rank 0 then points ``latest.dcp`` at it and keeps the newest
    ``keep``."""
    target = step_path(run_dir, step, sharded=True)
    sharded_checkpoint.save(tensors, {"format": FORMAT, **meta}, target)
    if distributed.env_rank() == 0:
        folder = checkpoint_dir(run_dir)
        link = folder / f".{LATEST_SHARDED}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        os.symlink(target.name, link)
        os.replace(link, folder / LATEST_SHARDED)
        _fsync_folder(folder)
        _rotate(run_dir, keep)
    return target


def load_sharded(path: Path, tensors: dict[str, Any]) -> None:
    """Fill this process's shards in ``tensors`` from a sharded checkpoint (see ``sharded_checkpoint.load_into``)."""
    sharded_checkpoint.load_into(Path(path), tensors)


def _rotate(run_dir: Path, keep: int) -> None:
    if keep > 0:
        for old in step_files(run_dir)[:-keep]:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def _point_latest(folder: Path, target: Path) -> None:
    temporary = folder / f".{LATEST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.link(target, temporary)
    except OSError:  # file systems without hard links get a copy
        shutil.copyfile(target, temporary)
    os.replace(temporary, folder / LATEST)


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable: a crash right after a save must not lose the new names."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def is_sharded(path: Path) -> bool:
    return sharded_checkpoint.is_sharded(path)


def load(path: Path) -> dict[str, Any]:
    """Map a checkpoint into CPU memory (tensors are read when used; a sharded one is read whole); a clear
    ``CheckpointError`` if it is missing, truncated or foreign."""
    path = Path(path)
    if is_sharded(path):
        return _checked(sharded_checkpoint.load_full(path), path)
    return _load_file(path)


def load_meta(path: Path) -> dict[str, Any]:
    """What a checkpoint says besides its tensors (step, recipe, phase, ...): cheap for both kinds (a file's
    tensors are mapped, not read)."""
    path = Path(path)
    if is_sharded(path):
        return _checked(sharded_checkpoint.load_meta(path), path)
    return _load_file(path)


def _load_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        others = [p.name for p in sorted(path.parent.glob("step_*.pt")) if p != path]
        hint = f"; other checkpoints in {path.parent}: {', '.join(others)}" if others else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it may be truncated or not a "
            f"haste checkpoint. Point run.resume at another file{hint}"
        ) from None
    return _checked(state, path)


def _checked(state: Any, path: Path) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a haste checkpoint (format {found!r}, expected {FORMAT!r})")
    return state


def capture_rng() -> dict[str, Any]:
    """This process's random number generator states."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
