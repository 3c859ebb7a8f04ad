"""The Inception-v3 feature network of FID, sFID, Inception Score and precision/recall.

Paper-comparable numbers (ADM suite, REPA, HASTE) come from the TensorFlow Inception graph of 2015-12-05. The
network here is torch-fidelity's ``FeatureExtractorInceptionV3``: the TF graph's layers (1008 classes, average pools
that do not count padding, a max pool in the last block's pooling branch) and its input path exactly, i.e. TF1's
bilinear resize to 299×299 (``interpolate_bilinear_2d_like_tensorflow1x``) and ``(x − 128)/128``. Its weights are
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the file whose SHA-256 starts with 6726825d, at
``FID_WEIGHTS_URL``; torch-fidelity's own copy carries the same hash). torchvision's ImageNet Inception weights give
*different*, non-comparable numbers and are not accepted.

Outputs per image: ``pool`` (2048, FID/precision/recall; torch-fidelity's ``2048``), ``logits`` (1008, Inception
Score; torch-fidelity's ``logits_unbiased`` = pool·Wᵀ without the classifier's bias, as the ADM suite takes them)
and ``spatial`` (sFID: the first 7 channels of the 17×17 ``mixed_6/conv`` map, 2023 values in TF's H·W·C order).
No library offers the spatial tap, so it is ours: a forward hook on the 1×1 branch of the fourth 17×17 block
(TF's ``mixed_6/conv``), read during the same forward pass (tests/eval/test_inception.py checks all three against
torch-fidelity run on its own).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from haste_core.errors import HasteError
from haste_core.weights.cache import cache_dir, hub_offline

log = logging.getLogger("haste")

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
TORCH_FIDELITY_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for them
NUM_CLASSES = 1008  # the TF graph's classifier (1000 ImageNet classes + 8 unused)
INPUT_SIDE = 299
SPATIAL_CHANNELS = 7  # ADM sFID: mixed_6/conv[..., :7]
SPATIAL_BLOCK = "Mixed_6d"  # TF mixed_6: the fourth 17×17 block; mixed_6/conv is its 1×1 branch


class FIDInception(nn.Module):
    """torch-fidelity's TF-exact Inception-v3 with the sFID tap; ``forward(uint8 B×3×H×W)`` ->
    {pool, spatial, logits} in float32."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.extractor = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
        )
        self._spatial: Tensor | None = None
        getattr(self.extractor, SPATIAL_BLOCK).branch1x1.register_forward_hook(self._tap)
        self.eval().requires_grad_(False)

    def _tap(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float()

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise HasteError(f"Inception features need uint8 B×3×H×W images, got {images.dtype} {list(images.shape)}")
        pool, logits = self.extractor(images)
        spatial, self._spatial = self._spatial, None
        return {"pool": pool, "spatial": spatial, "logits": logits}


def _sha256_prefix(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[: len(FID_WEIGHTS_SHA256_PREFIX)]


def _candidates(path: str | Path | None) -> list[Path]:
    """Where the weights are looked for: ``path`` alone, else the haste cache, then torch.hub's cache (pytorch-fid's
    and torch-fidelity's names)."""
    if path:
        return [Path(path).expanduser()]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [cache_dir() / "inception" / FID_WEIGHTS_FILE, hub / FID_WEIGHTS_FILE, hub / TORCH_FIDELITY_WEIGHTS_FILE]


def fid_weights_note(path: str | Path | None = None) -> str:
    """Empty when the weights are on disk; else what will happen at the start of a run (for ``--check``; nothing
    is hashed or downloaded here)."""
    candidates = _candidates(path)
    if any(candidate.is_file() for candidate in candidates):
        return ""
    return (
        f"the FID Inception weights are not in {' or '.join(map(str, candidates))}; a run downloads "
        f"{FID_WEIGHTS_URL} at its start, or stops there when offline; to train offline, download that file "
        "and give its path as eval.inception"
    )


def find_fid_weights(path: str | Path | None = None) -> Path:
    """The FID Inception weights: ``path``, else the haste cache, else torch.hub's cache (where pytorch-fid and
    torchmetrics keep them); downloaded into the haste cache when online; ``HasteError`` at once offline."""
    candidates = _candidates(path)
    if path and not candidates[0].is_file():
        raise HasteError(f"Inception weights {candidates[0]} do not exist; download {FID_WEIGHTS_URL}")
    for candidate in candidates:
        if candidate.is_file():
            if _sha256_prefix(candidate) != FID_WEIGHTS_SHA256_PREFIX:
                raise HasteError(
                    f"{candidate} is not {FID_WEIGHTS_FILE} (its SHA-256 does not start with "
                    f"{FID_WEIGHTS_SHA256_PREFIX}); only those weights give FIDs comparable with the papers"
                )
            return candidate
    target = candidates[0]
    if hub_offline():
        raise HasteError(
            f"the FID Inception weights are not in {' or '.join(map(str, candidates))} and this process is offline; "
            f"download {FID_WEIGHTS_URL} to {target} (or give its path with --inception)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info(f"downloading {FID_WEIGHTS_URL} to {target}")
    try:
        torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(target), hash_prefix=FID_WEIGHTS_SHA256_PREFIX)
    except (OSError, RuntimeError) as exc:  # no network (URLError is an OSError), or a corrupt download
        raise HasteError(
            f"could not download {FID_WEIGHTS_URL} ({exc}); fetch it where there is network and put it at {target} "
            "(or give its path with --inception)"
        ) from None
    return target


def load_fid_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> FIDInception:
    return FIDInception(find_fid_weights(path)).to(device)
