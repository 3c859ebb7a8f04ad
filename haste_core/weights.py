"""Where pretrained weights come from: a local file, the Hugging Face hub cache, or a ``haste_resolve_weights``
plugin, and a clear error at once when none of them has them.

A component's ``weights:`` setting is ``hub`` (the library's hub file, through the shared Hugging Face cache
that timm and open_clip use), ``none`` (random weights, for tests), or the path of a ``.pth``/``.pt``/``.bin``/
``.safetensors`` file. With ``hub`` a ``haste_resolve_weights`` plugin is asked first. When the file is not
cached and the hub cannot be reached (``HF_HUB_OFFLINE=1`` or no network), loading fails within seconds with
the hub id, the file name and the three ways to supply it; it never waits through minutes of retries.
``python -m haste_core.prefetch RECIPE.yaml`` fills the cache ahead of time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from haste_core.errors import HasteError

HUB, NONE = "hub", "none"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
PROBE_TIMEOUT_S = 3.0  # one TCP connection attempt to the hub endpoint before any download (fail-fast offline)
ETAG_TIMEOUT_S = 10.0  # huggingface_hub's own default for the metadata request, once the probe succeeded
STATE_DICT_KEYS = ("state_dict", "model")  # containers training scripts wrap state dicts in (MAE: "model")


@dataclass(frozen=True)
class HubFile:
    """A weights file on the Hugging Face hub: the repository and the file names to try, preferred first."""

    repo_id: str
    filenames: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filenames[0]}"


def is_file_setting(setting: str) -> bool:
    """True when a ``weights:`` value names a file rather than ``hub`` or ``none``."""
    return setting not in (HUB, NONE)


def check_setting(setting: str) -> str | None:
    """An error message for a ``weights:`` value that cannot work (checked at validation), or None."""
    if not is_file_setting(setting):
        return None
    path = Path(setting).expanduser()
    if path.suffix not in WEIGHT_SUFFIXES:
        return f"{setting!r} is not 'hub', 'none' or a weights file ({', '.join(WEIGHT_SUFFIXES)}); give one of those"
    if not path.is_file():
        return f"weights file {str(path)!r} does not exist; give an existing file, 'hub' or 'none'"
    return None


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not at import, so tests and launchers can set it late)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def cached(hub: HubFile) -> Path | None:
    """The local copy of ``hub`` in the hub cache (the first of its file names present), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in hub.filenames:
        found = try_to_load_from_cache(hub.repo_id, filename, cache_dir=hub_cache_dir())
        if isinstance(found, str):
            return Path(found)
    return None


def missing_message(what: str, hub: HubFile, why: str) -> str:
    """The fail-fast message: what is missing, from where, and the three ways to supply it."""
    names = " or ".join(repr(f) for f in hub.filenames)
    return (
        f"{what}: the weights are not in the Hugging Face cache ({hub_cache_dir()}) and {why}. Expected hub id "
        f"'{hub.repo_id}', file {names}. Supply them in one of three ways: (1) put the file on this machine "
        f"and give its path in the recipe (weights: /path/to/{hub.filenames[0]}); (2) on a machine with internet "
        f"run `python -m haste_core.prefetch RECIPE.yaml`, which stores them in the cache, and share or copy that "
        f"cache here (HF_HOME / HF_HUB_CACHE); (3) install a plugin whose haste_resolve_weights hook returns the "
        "file's path"
    )


def _probe(endpoint: str) -> str | None:
    """Why the hub endpoint cannot be reached (one TCP connection, a few seconds at most), or None."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{endpoint} cannot be reached ({exc.__class__.__name__}: {exc})"


def fetch(hub: HubFile, what: str) -> Path:
    """The cached file, downloading it if needed; a ``HasteError`` within seconds when offline."""
    found = cached(hub)
    if found is not None:
        return found
    if hub_offline():
        raise HasteError(missing_message(what, hub, "HF_HUB_OFFLINE is set"))
    unreachable = _probe(hub_endpoint())
    if unreachable:
        raise HasteError(missing_message(what, hub, unreachable))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in hub.filenames:
        try:
            return Path(hf_hub_download(hub.repo_id, filename, cache_dir=hub_cache_dir(), etag_timeout=ETAG_TIMEOUT_S))
        except EntryNotFoundError:
            continue
    raise HasteError(f"{what}: hub repository '{hub.repo_id}' has none of the files {list(hub.filenames)}")


def resolve(
    setting: str,
    *,
    kind: str,
    name: str,
    hub: HubFile | None,
    resolve_weights: Callable[[str, str], Path | None] | None = None,
) -> Path | None:
    """The local file to load for a ``weights:`` setting, or None for ``none``.

    ``hub``: a ``haste_resolve_weights`` plugin's answer if it gives one, else the hub file (cached or
    downloaded). A file path: that file.
    """
    what = f"{kind} {name}"
    if setting == NONE:
        return None
    if is_file_setting(setting):
        problem = check_setting(setting)
        if problem:
            raise HasteError(f"{what}: {problem}")
        return Path(setting).expanduser()
    offered = resolve_weights(kind, name) if resolve_weights is not None else None
    if offered is not None:
        if not Path(offered).is_file():
            raise HasteError(f"haste_resolve_weights offered {offered} for {what}, but that file does not exist")
        return Path(offered)
    if hub is None:
        raise HasteError(f"{what} has no hub file; give the path of a weights file in 'weights:'")
    return fetch(hub, what)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``torch.save``d state dict (unwrapped from ``state_dict``
    or ``model`` if it sits in one), loaded on the CPU without executing pickled code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state: Any = torch.load(path, map_location="cpu", weights_only=True)
    for key in STATE_DICT_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HasteError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return dict(state)


def check_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """A ``HasteError`` naming the first missing, unexpected or mis-shaped key if ``state`` does not fit ``model``."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise HasteError(f"{path} does not fit {what}: key '{key}' is missing (the weights of another model?)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise HasteError(
                f"{path} does not fit {what}: '{key}' has shape {tuple(state[key].shape)} in the file and "
                f"{tuple(tensor.shape)} in the model (is it another size of this model?)"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise HasteError(f"{path} does not fit {what}: unexpected key '{extra[0]}' ({len(extra)} unexpected in all)")
