"""Score generated images against a reference batch: FID, sFID, Inception Score, precision and recall
(``haste evaluate``).

Samples and reference are ADM-suite ``.npz`` files (``arr_0``: uint8 N×H×W×3; e.g. ``VIRTUAL_imagenet256_labeled.npz``
for ImageNet 256) or folders of PNGs. Both go through the same FID Inception network (``haste_core.eval.inception``),
Protocol as in the ADM suite: FID on the 2048-d pool features and sFID on the first 7 channels of ``mixed_6/conv``,
both against the statistics stored in the reference file (``mu``/``sigma``, ``mu_s``/``sigma_s``: they cover the
whole training set) when it has them, else against those of its images; Inception Score over splits of 5,000;
precision/recall with k = 3 nearest neighbours on the pool features of the reference *images* (the 10,000 of
``arr_0``). ``reference_statistics`` in the result says which statistics FID and sFID used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from haste_core.errors import HasteError
from haste_core.eval.fid import frechet_distance, gaussian_stats

IS_SPLIT_SIZE = 5000  # ADM evaluator: Inception Score averaged over splits of 5,000 images
NEIGHBOURS = 3  # ADM evaluator: k of the k-NN manifold (Kynkäänniemi et al. 2019)
DISTANCE_CHUNK = 2048  # rows of the pairwise-distance matrix computed at a time


# --- images -----------------------------------------------------------------------------------------------------


def read_images(path: str | Path) -> np.ndarray:
    """uint8 N×H×W×3 from an ADM ``.npz`` (``arr_0``) or a folder of PNG/JPEG files (sorted by name)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as data:
            if "arr_0" not in data:
                raise HasteError(f"{path} has no 'arr_0' array (keys: {list(data.keys())}); expected the ADM layout")
            images = data["arr_0"]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        if not files:
            raise HasteError(f"{path} holds no .png or .jpg images")
        images = np.stack([_read_rgb(p) for p in files])
    else:
        raise HasteError(f"{path} is neither an .npz file nor a folder of images")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise HasteError(f"{path}: expected uint8 N×H×W×3 images, got {images.dtype} {list(images.shape)}")
    return images


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))
    except OSError as exc:
        raise HasteError(f"{path} is not a readable image ({exc})") from None


def write_npz(path: str | Path, images: np.ndarray) -> Path:
    """Write uint8 N×H×W×3 images as an ADM-suite ``.npz`` (key ``arr_0``), atomically."""
    path = Path(path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise HasteError(f"the ADM layout is uint8 N×H×W×3, got {images.dtype} {list(images.shape)}")
    temporary = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(temporary, arr_0=images)
    temporary.replace(path)
    return path


# --- metrics on features ----------------------------------------------------------------------------------------


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) per split of ``split_size`` images, averaged over splits (ADM's protocol)."""
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start : start + split_size]
        marginal = part.mean(dim=0, keepdim=True)
        kl = (part * (torch.log(part.clamp_min(1e-30)) - torch.log(marginal.clamp_min(1e-30)))).sum(dim=1)
        scores.append(torch.exp(kl.mean()).item())
    return float(np.mean(scores))


def knn_radii(features: torch.Tensor, k: int = NEIGHBOURS, progress: bool = False) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point in the same set."""
    radii = []
    for start in _chunks(len(features), "precision/recall: radii", progress):
        distances = torch.cdist(features[start : start + DISTANCE_CHUNK], features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the 1st nearest is the point itself (0)
    return torch.cat(radii)


def coverage_of(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, progress: bool = False) -> float:
    """Share of ``queries`` inside the union of balls around ``manifold`` points with the given radii."""
    inside = []
    for start in _chunks(len(queries), "precision/recall: coverage", progress):
        distances = torch.cdist(queries[start : start + DISTANCE_CHUNK], manifold)
        inside.append((distances <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside).double().mean().item()


def _chunks(count: int, what: str, progress: bool) -> Iterable[int]:
    from tqdm import tqdm

    return tqdm(range(0, count, DISTANCE_CHUNK), desc=what, unit="chunk", leave=False, disable=not progress)


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS, device: torch.device | str = "cpu", progress: bool = False
) -> tuple[float, float]:
    """Improved precision (fakes inside the real manifold) and recall (reals inside the fake manifold), computed in
    float64 on ``device`` (a GPU when evaluating 50K samples), with a progress bar when ``progress``."""
    real_t = torch.as_tensor(real, dtype=torch.float64, device=device)
    fake_t = torch.as_tensor(fake, dtype=torch.float64, device=device)
    for name, points in (("reference", real_t), ("sample", fake_t)):
        if len(points) <= k:
            raise HasteError(f"precision/recall with k={k} needs more than {k} {name} images, got {len(points)}")
    precision = coverage_of(real_t, knn_radii(real_t, k, progress), fake_t, progress)
    recall = coverage_of(fake_t, knn_radii(fake_t, k, progress), real_t, progress)
    return precision, recall


# --- the reference: images and stored statistics -------------------------------------------------------------


STORED_STATISTICS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}  # ADM reference batch keys
Statistics = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Reference:
    """A reference batch: its images (None for a statistics-only file such as U-ViT's COCO stats) and the Gaussian
    statistics stored in it, by feature (``pool``: ``mu``/``sigma``; ``spatial``: ``mu_s``/``sigma_s``)."""

    path: Path
    images: np.ndarray | None
    stored: dict[str, Statistics]


def read_reference(path: str | Path) -> Reference:
    """The reference batch at ``path``: an ADM ``.npz`` (``arr_0`` and/or the stored statistics) or a folder."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".npz"):
        return Reference(path, read_images(path), {})
    with np.load(path) as data:
        keys = set(data.keys())
        stored = {
            feature: (data[mean].astype(np.float64), data[cov].astype(np.float64))
            for feature, (mean, cov) in STORED_STATISTICS.items()
            if mean in keys and cov in keys
        }
    if "arr_0" not in keys and not stored:
        raise HasteError(
            f"{path} has neither images ('arr_0') nor stored statistics ('mu'/'sigma', 'mu_s'/'sigma_s'); "
            f"keys: {sorted(keys)}"
        )
    return Reference(path, read_images(path) if "arr_0" in keys else None, stored)


def reference_statistics(
    stored: dict[str, Statistics], outputs: dict[str, np.ndarray] | None, feature: str
) -> tuple[Statistics, str] | None:
    """The reference's statistics of ``feature`` as the ADM suite takes them, and where they came from: the
    ``stored`` ones when the file has them (they cover the whole training set), else those of the reference images'
    Inception ``outputs``; None when there are neither."""
    if feature in stored:
        return stored[feature], "stored"
    if outputs is None:
        return None
    return gaussian_stats(outputs[feature]), "images"


def all_metrics(
    samples: dict[str, np.ndarray],
    reference: dict[str, np.ndarray] | None,
    stored: dict[str, Statistics] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Every metric from Inception outputs ({pool, spatial, logits} as N×… arrays) of the samples and of the
    reference images (None: a statistics-only reference), FID/sFID against the ``stored`` statistics where given;
    ``reference_statistics`` says for fid and sfid whether the ``stored`` statistics or the ``images`` were used.
    A metric without what it needs (precision/recall: reference images) is left out."""
    metrics: dict[str, Any] = {"inception_score": inception_score(samples["logits"])}
    sources = {}
    for metric, feature in (("fid", "pool"), ("sfid", "spatial")):
        found = reference_statistics(stored or {}, reference, feature)
        if found is not None:
            metrics[metric] = frechet_distance(*gaussian_stats(samples[feature]), *found[0])
            sources[metric] = found[1]
    if reference is not None:
        metrics["precision"], metrics["recall"] = precision_recall(
            reference["pool"], samples["pool"], device=device, progress=True
        )
    metrics["reference_statistics"] = sources
    return metrics


# --- features -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def inception_outputs(
    model: torch.nn.Module, images: np.ndarray, batch: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Run uint8 N×H×W×3 images through the Inception network in batches; {pool, spatial, logits} in float64."""
    from tqdm import tqdm

    parts: dict[str, list[np.ndarray]] = {"pool": [], "spatial": [], "logits": []}
    for start in tqdm(range(0, len(images), batch), desc="inception", unit="batch", leave=False):
        chunk = torch.from_numpy(images[start : start + batch]).permute(0, 3, 1, 2).to(device)
        for key, value in model(chunk).items():
            parts[key].append(value.double().cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def evaluate_files(
    samples: str | Path, reference: str | Path, *, inception: str | None, batch: int, device: torch.device
) -> dict[str, Any]:
    """Every metric of the images in ``samples`` against the reference batch ``reference`` (``.npz`` files or PNG
    folders), with the counts of both (``num_samples``, ``num_reference``: reference images, 0 for a
    statistics-only file) and ``reference_statistics`` (see ``all_metrics``)."""
    from haste_core.eval.inception import load_fid_inception

    model = load_fid_inception(inception, device)  # first: missing weights fail before images are read
    sample_images, ref = read_images(samples), read_reference(reference)
    sample_outputs = inception_outputs(model, sample_images, batch, device)
    ref_outputs = None if ref.images is None else inception_outputs(model, ref.images, batch, device)
    metrics = all_metrics(sample_outputs, ref_outputs, ref.stored, device)
    num_reference = 0 if ref.images is None else len(ref.images)
    return {**metrics, "num_samples": len(sample_images), "num_reference": num_reference}
