"""Where pretrained weights come from: a local file, the Hugging Face hub cache, or a ``haste_resolve_weights``
plugin, and a clear error at once when none of them has them.

A component's ``weights:`` setting is ``hub`` (the library's hub file, through the shared Hugging Face cache
that timm and open_clip use), ``none`` (random weights, for tests), or the path of a ``.pth``/``.pt``/``.bin``/
``.safetensors`` file. With ``hub`` a ``haste_resolve_weights`` plugin is asked first. When the file is not
cached and the hub cannot be reached (``HF_HUB_OFFLINE=1`` or no network), loading fails within seconds with
the hub id, the file name and the three ways to supply it; it never waits through minutes of retries.
``haste prefetch RECIPE.yaml`` fills the cache ahead of time.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from haste_core.errors import HasteError
from haste_core.weights.cache import hub_cache_dir, hub_offline

HUB, NONE = "hub", "none"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
PROBE_TIMEOUT_S = 2.0  # one TCP connection (with its name lookup) to the hub or proxy before any download; a
# reachable hub answers in well under a second, and the whole offline failure must stay under 5 s
ETAG_TIMEOUT_S = 10.0  # huggingface_hub's own default for the metadata request, once the probe succeeded
DIFFUSERS_CONFIG = ("config.json",)  # a diffusers model folder: config plus weights (diffusers' default names)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
STATE_DICT_KEYS = ("state_dict", "model")  # containers training scripts wrap state dicts in (MAE: "model")


@dataclass(frozen=True)
class HubFile:
    """A weights file on the Hugging Face hub: the repository and the file names to try, preferred first."""

    repo_id: str
    filenames: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filenames[0]}"


def diffusers_hub_files(name_or_folder: str) -> list[HubFile]:
    """What ``from_pretrained`` of a diffusers model (the SD-VAE) reads from the hub: its config and weights;
    nothing for a local folder."""
    if Path(name_or_folder).expanduser().is_dir():
        return []
    return [HubFile(name_or_folder, DIFFUSERS_CONFIG), HubFile(name_or_folder, DIFFUSERS_WEIGHTS)]


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


def missing_message(what: str, hub: HubFile, why: str, local: str = "") -> str:
    """The fail-fast message: what is missing, from where, and the ways to supply it. ``local``: how the recipe
    names a local copy instead of the default ``weights:`` file (then no ``haste_resolve_weights`` way either)."""
    names = " or ".join(repr(f) for f in hub.filenames)
    setting = local or f"weights: /path/to/{hub.filenames[0]}"
    ways = [
        f"put the file on this machine and give its path in the recipe ({setting})",
        "on a machine with internet run `haste prefetch RECIPE.yaml`, which stores them in the cache, "
        "and share or copy that cache here (HF_HOME / HF_HUB_CACHE)",
    ]
    if not local:
        ways.append("install a plugin whose haste_resolve_weights hook returns the file's path")
    numbered = "; ".join(f"({i}) {way}" for i, way in enumerate(ways, 1))
    return (
        f"{what}: the weights are not in the Hugging Face cache ({hub_cache_dir()}) and {why}. Expected hub id "
        f"'{hub.repo_id}', file {names}. Supply them in one of {len(ways)} ways: {numbered}"
    )


def _first_hop(endpoint: str) -> tuple[str, int, str]:
    """Host, port and a description of where a request to ``endpoint`` goes first: the proxy that the
    ``https_proxy``/``http_proxy`` variables name for it (unless ``no_proxy`` exempts the host), else the endpoint."""
    url = urlparse(endpoint)
    host = url.hostname or ""
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return via.hostname or "", via.port or (443 if via.scheme == "https" else 80), f"{endpoint} (proxy {proxy})"
    return host, url.port or (443 if url.scheme == "https" else 80), endpoint


def _probe(endpoint: str) -> str | None:
    """Why the hub endpoint cannot be reached, or None; one TCP connection (name lookup included) bounded by
    ``PROBE_TIMEOUT_S``: it runs in a daemon thread because a lookup with no reachable DNS server ignores the
    socket timeout and can hang for tens of seconds."""
    host, port, where = _first_hop(endpoint)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"{where} cannot be reached ({exc.__class__.__name__}: {exc})")

    thread = threading.Thread(target=connect, name="haste-hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    if not outcome:
        return f"{where} did not answer within {PROBE_TIMEOUT_S:g} s (no network?)"
    return outcome[0]


def fetch(hub: HubFile, what: str, local: str = "") -> Path:
    """The cached file, downloading it if needed; a ``HasteError`` within seconds when offline (``local``: see
    ``missing_message``)."""
    found = cached(hub)
    if found is not None:
        return found
    if hub_offline():
        raise HasteError(missing_message(what, hub, "HF_HUB_OFFLINE is set", local))
    unreachable = _probe(hub_endpoint())
    if unreachable:
        raise HasteError(missing_message(what, hub, unreachable, local))
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
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, TorchScript archives, pickles of whole models: all unreadable here
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise HasteError(
            f"cannot read {path} as a state dict ({exc.__class__.__name__}: {first_line}); "
            "give a .safetensors file or a torch.save'd state dict (a TorchScript or whole-model pickle will not do)"
        ) from None
    for key in STATE_DICT_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HasteError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return dict(state)


# How check_fits words a misfit after "{source} does not fit {target}: " (import_checkpoint words it for checkpoints)
FILE_MISFIT = {
    "missing": "key '{key}' is missing (the weights of another model?)",
    "shape": "'{key}' has shape {found} in the file and {wanted} in the model (is it another size of this model?)",
    "extra": "unexpected key '{key}' ({count} unexpected in all)",
}


def check_fits(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source: object,
    target: str,
    *,
    error: type[HasteError] = HasteError,
    wording: Mapping[str, str] = FILE_MISFIT,
) -> None:
    """Raise ``error`` if ``state`` does not fit ``model`` exactly, naming the first of the model's keys that is
    missing or shaped otherwise, else the first (sorted) key the model lacks; ``wording`` phrases each case."""
    expected = model.state_dict()
    prefix = f"{source} does not fit {target}: "
    for key, tensor in expected.items():
        if key not in state:
            raise error(prefix + wording["missing"].format(key=key, target=target))
        if tuple(state[key].shape) != tuple(tensor.shape):
            found, wanted = tuple(state[key].shape), tuple(tensor.shape)
            raise error(prefix + wording["shape"].format(key=key, target=target, found=found, wanted=wanted))
    extra = sorted(set(state) - set(expected))
    if extra:
        raise error(prefix + wording["extra"].format(key=extra[0], target=target, count=len(extra)))
