"""haste: train diffusion transformers faster by aligning them with a frozen teacher, then letting go.

The public plugin API, importable from here in one line::

    from haste_core import Fired, Registry, RecipeError, Termination, all_reduce_mean, hookimpl

Importing this package is cheap: the names that need torch (the interfaces, the distributed helpers) load on
first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from haste_core.errors import CheckpointError, HasteError, PluginError, RecipeError
from haste_core.hookspecs import hookimpl
from haste_core.registry import Registry

__version__ = "0.1.0"

_LAZY = {
    **{
        name: "haste_core.interfaces"
        for name in (
            "Alignment", "AttentionView", "Capture", "DataSpec", "Dataset", "Fired", "Objective", "PolicyContext",
            "RunContext", "Student", "StudentOutput", "StudentSpec", "Teacher", "TeacherOutput", "TeacherSpec",
            "Termination", "TrainingPair",
        )
    },
    **{name: "haste_core.distributed" for name in ("all_reduce_mean", "rank_zero_first")},
    **{name: "haste_core.ops" for name in ("attention_logits", "conflict_cosine")},
}  # fmt: skip

__all__ = [
    "CheckpointError", "HasteError", "PluginError", "RecipeError", "Registry", "__version__", "hookimpl",
    *sorted(_LAZY),
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'haste_core' has no attribute {name!r}")
