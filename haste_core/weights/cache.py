"""Where haste keeps what it makes once and reuses: ``$HASTE_CACHE``, by default ``~/.cache/haste``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    return Path(os.environ.get("HASTE_CACHE") or Path.home() / ".cache" / "haste")
