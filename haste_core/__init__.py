"""haste: train diffusion transformers faster by aligning them with a frozen teacher, then letting go.

Plugin authors need ``hookimpl`` and the interface types, both importable from here::

    from haste_core import hookimpl, Teacher, TeacherOutput

Importing this package is cheap: the interface types (which need torch) load on first access.
"""

from __future__ import annotations

from typing import Any

from haste_core.errors import HasteError, RecipeError
from haste_core.hookspecs import hookimpl

__version__ = "0.1.0"

_INTERFACE_NAMES = {
    "Alignment",
    "Capture",
    "DataSpec",
    "Dataset",
    "Fired",
    "Objective",
    "RunContext",
    "Student",
    "StudentOutput",
    "StudentSpec",
    "Teacher",
    "TeacherOutput",
    "TeacherSpec",
    "Termination",
    "TrainingPair",
}

__all__ = ["HasteError", "RecipeError", "__version__", "hookimpl", *sorted(_INTERFACE_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _INTERFACE_NAMES:
        from haste_core import interfaces

        return getattr(interfaces, name)
    raise AttributeError(f"module 'haste_core' has no attribute {name!r}")
