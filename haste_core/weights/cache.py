"""The one place that knows where downloaded and home-made files live, and whether the hub may be reached.

haste's own cache (``$HASTE_CACHE``, by default ``~/.cache/haste``) holds what haste makes once and reuses (the
digits teacher, FID Inception weights, example folders). Hub files go through huggingface_hub's cache and its
offline switch, read from ``huggingface_hub.constants`` at call time (huggingface_hub reads ``HF_HUB_CACHE``,
``HF_HOME`` and ``HF_HUB_OFFLINE`` from the environment when it is imported).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """haste's cache folder (not created here)."""
    return Path(os.environ.get("HASTE_CACHE") or Path.home() / ".cache" / "haste")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache that timm, open_clip and diffusers share."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: nothing may be downloaded, a missing file fails at once."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
