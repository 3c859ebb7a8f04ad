"""Score generated images against a reference batch: FID, sFID, Inception Score, precision and recall
(``haste evaluate``).

Samples and reference are ADM-suite ``.npz`` files (``arr_0``: uint8 N×H×W×3; e.g. ``VIRTUAL_imagenet256_labeled.npz``
for ImageNet 256) or folders of PNGs. Both go through the same FID Inception network (``haste_core.eval.inception``),
so reference statistics are recomputed from the reference images rather than read from the file. Protocol as in
the ADM suite: FID on the 2048-d pool features, sFID on the first 7 channels of ``mixed_6/conv``, Inception Score
over splits of 5,000, precision/recall with k = 3 nearest neighbours on the pool features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from haste_core.errors import HasteError
from haste_core.eval.fid import frechet_distance_features

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


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b)


def knn_radii(features: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point in the same set."""
    radii = []
    for start in range(0, len(features), DISTANCE_CHUNK):
        distances = _pairwise(features[start : start + DISTANCE_CHUNK], features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the 1st nearest is the point itself (0)
    return torch.cat(radii)


def coverage_of(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> float:
    """Share of ``queries`` inside the union of balls around ``manifold`` points with the given radii."""
    inside = []
    for start in range(0, len(queries), DISTANCE_CHUNK):
        distances = _pairwise(queries[start : start + DISTANCE_CHUNK], manifold)
        inside.append((distances <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside).double().mean().item()


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Improved precision (fakes inside the real manifold) and recall (reals inside the fake manifold)."""
    real_t, fake_t = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    for name, points in (("reference", real_t), ("sample", fake_t)):
        if len(points) <= k:
            raise HasteError(f"precision/recall with k={k} needs more than {k} {name} images, got {len(points)}")
    precision = coverage_of(real_t, knn_radii(real_t, k), fake_t)
    recall = coverage_of(fake_t, knn_radii(fake_t, k), real_t)
    return precision, recall


def all_metrics(samples: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Every metric from Inception outputs ({pool, spatial, logits} as N×… arrays) of samples and reference."""
    precision, recall = precision_recall(reference["pool"], samples["pool"])
    return {
        "fid": frechet_distance_features(samples["pool"], reference["pool"]),
        "sfid": frechet_distance_features(samples["spatial"], reference["spatial"]),
        "inception_score": inception_score(samples["logits"]),
        "precision": precision,
        "recall": recall,
    }


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
) -> dict[str, float]:
    """Every metric of the images in ``samples`` against those in ``reference`` (``.npz`` files or PNG folders),
    with the counts of both (``num_samples``, ``num_reference``)."""
    from haste_core.eval.inception import load_fid_inception

    model = load_fid_inception(inception, device)  # first: missing weights fail before images are read
    sample_images, reference_images = read_images(samples), read_images(reference)
    metrics = all_metrics(
        inception_outputs(model, sample_images, batch, device),
        inception_outputs(model, reference_images, batch, device),
    )
    return {**metrics, "num_samples": len(sample_images), "num_reference": len(reference_images)}
