"""Sharded checkpoints (``distributed.strategy: fsdp2``): one folder per step, written by every process at once.

``<run_dir>/checkpoints/step_<8 digits>.dcp/`` holds the tensors (student, EMA, alignment heads, optimiser state)
as ``torch.distributed.checkpoint`` files, each process writing its own shards, and ``meta.pt``: everything that
is not a tensor (step, recipe, phase, data position, RNG states, scaler, the optimiser's param groups), a plain
``torch.save`` file. ``latest.dcp`` is a symbolic link to the newest folder. DCP reshards on load, so a run saved
by N processes resumes on M.

Two safety rules, because DCP itself would run code from a checkpoint: its ``.metadata`` file is a pickle, read
here by an unpickler that admits only DCP's own metadata classes, and no value is stored as pickled bytes (DCP
loads those with ``weights_only=False``); the non-tensor values live in ``meta.pt``, read with
``weights_only=True``. A folder is written under a temporary name and renamed when every shard and ``meta.pt``
are on disk, so a crash never leaves a partial folder under a checkpoint's name.
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from haste_core import distributed
from haste_core.errors import CheckpointError

SUFFIX = ".dcp"
META = "meta.pt"

# What a DCP .metadata pickle may name: its metadata classes, sizes, dtypes and paths; nothing that runs code.
_ALLOWED_MODULES = {"torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem"}
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = module in _ALLOWED_MODULES or (module, name) in _ALLOWED_GLOBALS
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")
        return super().find_class(module, name)


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader, with the metadata read by the restricted unpickler and pickled values refused."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp.Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not the metadata of a haste checkpoint ({exc}); it was not loaded. Point run.resume "
                "at another checkpoint."
            ) from None
        if not isinstance(metadata, dcp.Metadata):
            raise CheckpointError(f"{path} is not DCP metadata (it holds a {type(metadata).__name__})")
        for key, item in metadata.state_dict_metadata.items():
            if isinstance(item, dcp.BytesStorageMetadata):
                raise CheckpointError(f"{path}: '{key}' is a pickled value, which haste checkpoints never hold")
        metadata.storage_meta = metadata.storage_meta or dcp.metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint: a ``.dcp`` folder (``latest.dcp`` links to one)."""
    return Path(path).suffix == SUFFIX and Path(path).is_dir()


def save(tensors: dict[str, Any], meta: dict[str, Any], target: Path) -> None:
    """Every process calls this with its shards (``tensors``, DTensors or full tensors) and the same ``meta``.
    The folder appears under ``target`` only when complete; on a failure (a full disk on any process) nothing
    is left behind, every process raises the same ``CheckpointError``, and earlier checkpoints are untouched."""
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / distributed.broadcast_object(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    failure = ""
    try:
        writer = dcp.FileSystemWriter(temporary, sync_files=True)
        with _one_process_is_intended():
            dcp.save(tensors, storage_writer=writer, no_dist=not distributed.is_initialized())
        if distributed.env_rank() == 0:
            _write_meta(meta, temporary / META)
    except (OSError, dcp.api.CheckpointException) as exc:
        failure = _reason(exc)
    failures = [reason for reason in distributed.all_gather_objects(failure) if reason]
    if failures:
        if distributed.env_rank() == 0:
            shutil.rmtree(temporary, ignore_errors=True)
        kept = ", ".join(p.name for p in sorted(folder.glob("step_*"))) or "none"
        raise CheckpointError(
            f"cannot write checkpoint {target}: {failures[0]}; nothing was overwritten and the earlier checkpoints "
            f"are kept ({kept}). Free space (or write access) in {folder}, then run the same command again to resume "
            "from the last of them."
        )
    if distributed.env_rank() == 0:
        if target.exists():  # the same step saved again (a resumed run stopped at once): the new one replaces it
            stale = folder / f".{target.name}.{uuid.uuid4().hex[:12]}.old"
            os.replace(target, stale)
            shutil.rmtree(stale)
        os.replace(temporary, target)


@contextmanager
def _one_process_is_intended() -> Iterator[None]:
    """DCP warns on every save and load without a process group; for one process that is what haste means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _write_meta(meta: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(meta, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    # DCP's CheckpointException maps each failed rank to (its exception, its traceback)
    inner = [pair[0] for pair in getattr(exc, "failures", {}).values() if isinstance(pair[0], BaseException)]
    return _reason(inner[0]) if inner else str(exc).splitlines()[0]


def load_meta(path: Path) -> dict[str, Any]:
    """The non-tensor part of a sharded checkpoint (no tensor is read)."""
    meta = Path(path) / META
    if not meta.is_file() or not (Path(path) / ".metadata").is_file():
        raise CheckpointError(
            f"{path} is not a complete sharded checkpoint (it lacks {META} or .metadata); point run.resume at "
            "another checkpoint"
        )
    try:
        return torch.load(meta, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{meta} cannot be read ({type(exc).__name__}: {exc}); it may be truncated") from None


def load_into(path: Path, tensors: dict[str, Any]) -> None:
    """Fill ``tensors`` (this process's shards, in place) from the checkpoint, whatever process count wrote it."""
    reader = SafeReader(path)
    reader.read_metadata()  # its refusal, if any, as haste's error rather than inside DCP's
    try:
        with _one_process_is_intended():
            dcp.load(tensors, storage_reader=reader, no_dist=not distributed.is_initialized())
    except dcp.api.CheckpointException as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {_reason(exc)}") from None


def load_full(path: Path) -> dict[str, Any]:
    """The whole checkpoint as full CPU tensors plus its ``meta.pt`` values: what readers (sample, export,
    init_from) use. Every tensor is read, in this process alone."""
    meta = load_meta(path)
    tensors: dict[str, Any] = {}
    reader = SafeReader(path)
    reader.read_metadata()
    try:  # what torch's dcp_to_torch_save does, in memory: no process group, every key, no template
        _load_state_dict(tensors, reader, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    except dcp.api.CheckpointException as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {_reason(exc)}") from None
    state = {**meta, **tensors}
    state["optimizer"] = {"state": tensors.get("optimizer", {}), "param_groups": meta.get("optimizer_groups", [])}
    return state
