"""FID, Inception Score and precision/recall against closed-form answers; the ADM .npz layout and its stored
statistics; finding the Inception weights (the network itself: tests/eval/test_inception.py)."""

from __future__ import annotations

import urllib.error
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from haste_core.errors import HasteError
from haste_core.eval.fid import frechet_distance, frechet_distance_features, gaussian_stats
from haste_core.eval.scores import (
    all_metrics,
    inception_score,
    knn_radii,
    precision_recall,
    read_images,
    read_reference,
    write_npz,
)


def _random_covariance(rng: np.random.Generator, dim: int, rank: int) -> np.ndarray:
    samples = rng.standard_normal((rank + 1, dim)) * rng.uniform(0.5, 2.0, dim)
    return np.cov(samples, rowvar=False)  # rank ≤ rank: singular when rank < dim


def test_frechet_distance_of_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 1 + 0 + 4 + sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # ‖Δμ‖² + Σ(σ₁ − σ₂)²
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_scaled_full_covariances():
    # Σ₁ = a²Σ, Σ₂ = b²Σ commute: (Σ₁Σ₂)^½ = abΣ, so FD = ‖Δμ‖² + (a − b)²·tr Σ
    rng = np.random.default_rng(0)
    sigma = _random_covariance(rng, 32, 64)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    expected = np.sum((mu1 - mu2) ** 2) + (0.7 - 1.9) ** 2 * np.trace(sigma)
    assert frechet_distance(mu1, 0.49 * sigma, mu2, 3.61 * sigma) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-9)


def test_near_singular_covariances_are_exact_where_the_sqrtm_route_is_not():
    """Fewer samples than dimensions (rank 10 in 256-d), the FID failure case of ``scipy.linalg.sqrtm``."""
    rng = np.random.default_rng(0)
    sigma = _random_covariance(rng, 256, 9)
    mu = np.zeros(256)
    a, b = 1.0, 1.3
    exact = (a - b) ** 2 * np.trace(sigma)
    ours = frechet_distance(mu, a * a * sigma, mu, b * b * sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns that the product is singular
        root = scipy.linalg.sqrtm((a * a * sigma) @ (b * b * sigma))
    via_sqrtm = (a * a + b * b) * np.trace(sigma) - 2 * np.trace(root).real
    assert abs(ours - exact) < 1e-9 * exact
    assert abs(via_sqrtm - exact) > 100 * abs(ours - exact)  # round-off of 1e-14 becomes 1e-7 per dimension


def test_frechet_distance_from_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(1)
    first = rng.normal(0.0, 1.0, (50_000, 4))
    second = rng.normal(0.5, 2.0, (50_000, 4))
    expected = 4 * 0.25 + 4 * (1.0 - 2.0) ** 2
    assert frechet_distance_features(first, second) == pytest.approx(expected, rel=0.02)
    mean, cov = gaussian_stats(first)
    assert mean.shape == (4,) and cov.shape == (4, 4)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_score_closed_forms():
    confident = np.full((1000, 10), -50.0)
    confident[np.arange(1000), np.arange(1000) % 10] = 50.0  # one certain class each, classes balanced
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(np.zeros((500, 10))) == pytest.approx(1.0, rel=1e-9)  # every prediction uniform
    one_class = np.zeros((100, 10))
    one_class[:, 3] = 50.0
    assert inception_score(one_class) == pytest.approx(1.0, rel=1e-6)  # certain, but no diversity
    # splits of 5,000 are scored separately and averaged: a split with one class scores 1
    mixed = np.concatenate([confident[:500], one_class[:50]])
    assert inception_score(mixed, split_size=500) == pytest.approx((10.0 + 1.0) / 2, rel=1e-6)


def test_precision_and_recall_of_known_configurations():
    rng = np.random.default_rng(2)
    real = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(100, 1, (300, 2))])  # two far clusters
    half = rng.normal(0, 1, (300, 2))  # samples covering only the first cluster
    precision, recall = precision_recall(real, half)
    assert precision > 0.95 and 0.45 < recall < 0.55
    precision, recall = precision_recall(real, real + 1e3)  # everything far away
    assert precision == 0.0 and recall == 0.0
    precision, recall = precision_recall(real, real.copy())
    assert precision == 1.0 and recall == 1.0
    with pytest.raises(HasteError, match="more than 3"):
        precision_recall(real, real[:3])


def test_manifold_radius_is_the_distance_to_the_third_nearest_other_point():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]], dtype=torch.float64)
    # point 0: others at 1, 3, 7, 15 -> 7; point 7: others at 4, 6, 7, 8 -> 7; point 15: 8, 12, 14, 15 -> 14
    assert knn_radii(points).tolist() == [7.0, 6.0, 4.0, 7.0, 14.0]
    # precision counts a sample on the boundary of a ball as inside (distance <= radius, as the ADM suite does)
    fake = np.array([[-7.0], [-7.5]])
    precision, _ = precision_recall(points.numpy(), np.concatenate([fake, fake + 60]))
    assert precision == 0.25


def test_all_metrics_of_a_set_against_itself():
    rng = np.random.default_rng(3)
    outputs = {"pool": rng.standard_normal((200, 8)), "spatial": rng.standard_normal((200, 6)),
               "logits": rng.standard_normal((200, 10))}  # fmt: skip
    metrics = all_metrics(outputs, outputs)
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-8) and metrics["sfid"] == pytest.approx(0.0, abs=1e-8)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0 and metrics["inception_score"] > 1.0


def test_stored_reference_statistics_are_used_when_present(tmp_path):
    rng = np.random.default_rng(3)
    samples = {
        "pool": rng.normal(size=(40, 6)),
        "spatial": rng.normal(size=(40, 4)),
        "logits": rng.normal(size=(40, 5)),
    }
    reference = {"pool": rng.normal(size=(30, 6)) + 1, "spatial": rng.normal(size=(30, 4))}
    images = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    mu, sigma = np.full(6, 2.0), np.eye(6) * 3
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=mu, sigma=sigma)  # pool statistics stored, spatial not
    stored = read_reference(tmp_path / "adm.npz")
    assert set(stored.stored) == {"pool"} and np.array_equal(stored.stored["pool"][1], sigma)
    metrics = all_metrics(samples, reference, stored.stored)
    assert metrics["reference_statistics"] == {"fid": "stored", "sfid": "images"}
    assert metrics["fid"] == pytest.approx(frechet_distance(*gaussian_stats(samples["pool"]), mu, sigma), rel=1e-12)
    assert metrics["sfid"] == pytest.approx(frechet_distance_features(samples["spatial"], reference["spatial"]))
    plain = all_metrics(samples, reference)  # no stored statistics: the images' own
    assert plain["reference_statistics"] == {"fid": "images", "sfid": "images"}
    assert plain["fid"] == pytest.approx(frechet_distance_features(samples["pool"], reference["pool"]))
    assert (plain["precision"], plain["recall"]) == (metrics["precision"], metrics["recall"])  # images only
    # a statistics-only file (U-ViT's COCO stats): FID and IS, no precision/recall
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    only = read_reference(tmp_path / "stats.npz")
    assert only.images is None
    metrics = all_metrics(samples, None, only.stored)
    assert set(metrics) == {"fid", "inception_score", "reference_statistics"}
    np.savez(tmp_path / "neither.npz", something=mu)
    with pytest.raises(HasteError, match="neither images"):
        read_reference(tmp_path / "neither.npz")


def test_npz_in_the_adm_layout(tmp_path):
    images = np.random.default_rng(4).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = write_npz(tmp_path / "samples.npz", images)
    with np.load(path) as data:  # what the ADM evaluator does: np.load(path)["arr_0"]
        assert list(data.keys()) == ["arr_0"]
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (5, 16, 16, 3)
        assert np.array_equal(data["arr_0"], images)
    assert np.array_equal(read_images(path), images)
    with pytest.raises(HasteError, match="uint8 N×H×W×3"):
        write_npz(tmp_path / "bad.npz", images.astype(np.float32))


def test_read_images_from_a_folder_and_errors(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{index:06d}.png")
    assert np.array_equal(read_images(tmp_path), images)
    (tmp_path / "000009.png").write_bytes(b"not a png")
    with pytest.raises(HasteError, match=r"000009\.png"):
        read_images(tmp_path)
    np.savez(tmp_path / "other.npz", images=images)
    with pytest.raises(HasteError, match="no 'arr_0'"):
        read_images(tmp_path / "other.npz")


def test_fid_weights_fail_fast_offline_and_reject_other_files(tmp_path, monkeypatch):
    from haste_core.eval.inception import FID_WEIGHTS_URL, find_fid_weights

    monkeypatch.setenv("HASTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(HasteError, match="offline") as error:
        find_fid_weights()
    assert FID_WEIGHTS_URL in str(error.value)
    other = tmp_path / "torchvision_inception.pth"
    other.write_bytes(b"some other weights")
    with pytest.raises(HasteError, match="only those weights give FIDs comparable"):
        find_fid_weights(other)
    with pytest.raises(HasteError, match="do not exist"):
        find_fid_weights(tmp_path / "missing.pth")
    # online but without network: the download's failure is a clear error too, not a traceback
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(HasteError, match=r"could not download .*Name or service not known"):
        find_fid_weights()
