"""The Inception-v3 feature network of FID, sFID, Inception Score and precision/recall.

Paper-comparable numbers (ADM suite, REPA, HASTE) come from the TensorFlow Inception graph
of 2015-12-05. Its PyTorch port is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the file whose
SHA-256 starts with 6726825d, at ``FID_WEIGHTS_URL``); with those weights this module reproduces the TF
features up to the input resize (TF resizes inside the graph; here 299×299 bilinear, as pytorch-fid does), a
small difference that is not measured here. torchvision's ImageNet Inception weights give *different*,
non-comparable numbers and are not accepted. The architecture is torchvision's Inception-v3 with the TF graph's
differences: 1008 classes, average pools that do not count padding, and a max pool in the last block's pooling
branch.

Outputs per image: ``pool`` (2048, FID/precision/recall), ``spatial`` (first 7 channels of the 17×17
``mixed_6/conv`` map, 2023 values, sFID, in TF's H·W·C order) and ``logits`` (1008, Inception Score; pool·Wᵀ
without the classifier's bias, as the ADM suite computes them).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haste_core.errors import HasteError
from haste_core.weights.cache import cache_dir, hub_offline

log = logging.getLogger("haste")

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
NUM_CLASSES = 1008  # the TF graph's classifier (1000 ImageNet classes + 8 unused)
INPUT_SIDE = 299
SPATIAL_CHANNELS = 7  # ADM sFID: mixed_6/conv[..., :7]
WRAPPED_BLOCKS = {
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7b",
    "Mixed_7c",
}


class _BlockA(nn.Module):
    """InceptionA (Mixed_5b-d) with a padding-excluding average pool."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        pool = b.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat(
            [
                b.branch1x1(x),
                b.branch5x5_2(b.branch5x5_1(x)),
                b.branch3x3dbl_3(b.branch3x3dbl_2(b.branch3x3dbl_1(x))),
                pool,
            ],
            dim=1,
        )


class _BlockC(nn.Module):
    """InceptionC (Mixed_6b-e) with a padding-excluding average pool."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        b7 = b.branch7x7_3(b.branch7x7_2(b.branch7x7_1(x)))
        d = b.branch7x7dbl_1(x)
        d = b.branch7x7dbl_5(b.branch7x7dbl_4(b.branch7x7dbl_3(b.branch7x7dbl_2(d))))
        pool = b.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b.branch1x1(x), b7, d, pool], dim=1)


class _BlockE(nn.Module):
    """InceptionE (Mixed_7b: padding-excluding average pool; Mixed_7c: max pool)."""

    def __init__(self, block: nn.Module, max_pool: bool) -> None:
        super().__init__()
        self.block, self.max_pool = block, max_pool

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        t = b.branch3x3_1(x)
        b3 = torch.cat([b.branch3x3_2a(t), b.branch3x3_2b(t)], dim=1)
        d = b.branch3x3dbl_2(b.branch3x3dbl_1(x))
        d = torch.cat([b.branch3x3dbl_3a(d), b.branch3x3dbl_3b(d)], dim=1)
        if self.max_pool:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b.branch1x1(x), b3, d, b.branch_pool(pooled)], dim=1)


class FIDInception(nn.Module):
    """Inception-v3 as in the TF FID graph; ``forward(uint8 B×3×H×W)`` -> {pool, spatial, logits}."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=NUM_CLASSES)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            setattr(net, name, _BlockA(getattr(net, name)))
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            setattr(net, name, _BlockC(getattr(net, name)))
        net.Mixed_7b, net.Mixed_7c = _BlockE(net.Mixed_7b, max_pool=False), _BlockE(net.Mixed_7c, max_pool=True)
        self.net = net
        self.stem = [
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
            "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
            "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
        ]  # fmt: skip
        self.eval().requires_grad_(False)

    def load_fid_weights(self, path: Path) -> None:
        """Load pytorch-fid's state dict (torchvision key names) into the wrapped blocks."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        renamed = {}
        for key, value in state.items():
            head = key.split(".", 1)[0]
            renamed[key.replace(f"{head}.", f"{head}.block.", 1) if head in WRAPPED_BLOCKS else key] = value
        self.net.load_state_dict(renamed, strict=True)

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise HasteError(f"Inception features need uint8 B×3×H×W images, got {images.dtype} {list(images.shape)}")
        x = images.float() / 255
        x = F.interpolate(x, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        spatial = None
        for name in self.stem:
            module = getattr(self.net, name)
            if name == "Mixed_6d":  # TF mixed_6/conv = the 1×1 branch of the fourth 17×17 block
                spatial = module.block.branch1x1(x)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
            x = module(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        # Inception Score logits as the ADM suite (and improved-GAN's IS code) take them: pool · Wᵀ of the TF graph's
        # softmax/logits/MatMul, without the layer's bias
        return {"pool": pool, "spatial": spatial, "logits": pool @ self.net.fc.weight.T}


def _sha256_prefix(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[: len(FID_WEIGHTS_SHA256_PREFIX)]


def _candidates(path: str | Path | None) -> list[Path]:
    """Where the weights are looked for: ``path`` alone, else the haste cache, then torch.hub's cache."""
    if path:
        return [Path(path).expanduser()]
    return [cache_dir() / "inception" / FID_WEIGHTS_FILE, Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE]


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
    model = FIDInception()
    model.load_fid_weights(find_fid_weights(path))
    return model.to(device)
