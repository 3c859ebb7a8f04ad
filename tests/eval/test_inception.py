"""The FID Inception network against torch-fidelity run on its own, and FID/sFID against stored reference
statistics against the closed form: the same random weights (a file the test writes) in both, no network.

``pytest -s`` prints the measured differences (the figures of the ADM-comparability note)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from haste_core.errors import HasteError
from haste_core.eval import inception
from haste_core.eval.inception import FIDInception
from haste_core.eval.scores import evaluate_files, write_npz
from tests.eval.random_inception import sha256_prefix, write_random_inception

PREFIX_BLOCKS = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
]  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_inception(tmp_path_factory.mktemp("inception") / "random_inception.pth")


@pytest.fixture(scope="module")
def images():
    """Three small uint8 images, H×W×3 (the network resizes them to 299×299 anyway; each costs seconds on a CPU)."""
    return np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def theirs(weights, images):
    return fidelity_outputs(weights, torch.from_numpy(images).permute(0, 3, 1, 2))


def fidelity_outputs(weights, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """pool and logits from torch-fidelity's extractor alone; the sFID tap computed here from its layers, step by
    step as the TF graph does (TF1 resize, (x − 128)/128, the blocks up to mixed_6/conv, channels 0..6 in H·W·C)."""
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], str(weights))
    with torch.no_grad():
        pool, logits = net(images)
        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        x = (x - 128) / 128
        for name in PREFIX_BLOCKS:
            x = getattr(net, name)(x)
        conv = net.Mixed_6d.branch1x1(x)
    return {"pool": pool, "logits": logits, "spatial": conv[:, :7].permute(0, 2, 3, 1).reshape(len(images), -1)}


@pytest.mark.slow
def test_features_and_logits_are_torch_fidelitys(weights, images, theirs):
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    ours = FIDInception(weights)(images)
    assert ours["pool"].shape == (3, 2048) and ours["logits"].shape == (3, 1008)
    assert ours["spatial"].shape == (3, 17 * 17 * 7)
    for key in ("pool", "logits", "spatial"):
        difference = (ours[key] - theirs[key]).abs().max().item()
        print(f"max |haste - torch-fidelity| {key}: {difference:.3g} (values up to {theirs[key].abs().max():.3g})")
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["pool"].std() > 0 and ours["spatial"].std() > 0  # random weights, but not a degenerate network
    with pytest.raises(HasteError, match="uint8"):
        FIDInception(weights)(images.float())


def closed_form_fd(features: np.ndarray, mu: np.ndarray, root: np.ndarray) -> float:
    """FD between the Gaussian fitted to ``features`` (N×D) and N(mu, root·rootᵀ), without a matrix square root:
    the eigenvalues of Σ·root·rootᵀ are those of (X_c·root)ᵀ(X_c·root)/(N − 1), X_c the centred features, so
    tr((Σ·root·rootᵀ)^½) is the nuclear norm of X_c·root over √(N − 1)."""
    n = len(features)
    centred = features - features.mean(axis=0)
    diff = features.mean(axis=0) - mu
    nuclear = np.linalg.svd(centred @ root, compute_uv=False).sum()
    return float(diff @ diff + (centred**2).sum() / (n - 1) + (root**2).sum() - 2 * nuclear / np.sqrt(n - 1))


@pytest.mark.slow
def test_fid_against_stored_statistics_is_the_closed_form(weights, images, theirs, tmp_path, monkeypatch):
    # the random file stands in for pytorch-fid's: its own hash is the one expected
    monkeypatch.setattr(inception, "FID_WEIGHTS_SHA256_PREFIX", sha256_prefix(weights))
    rng = np.random.default_rng(1)
    write_npz(tmp_path / "samples.npz", images)
    features = {key: value.double().numpy() for key, value in theirs.items()}
    stored, expected = {}, {}
    for metric, feature, (mean_key, cov_key) in (("fid", "pool", ("mu", "sigma")),
                                                 ("sfid", "spatial", ("mu_s", "sigma_s"))):  # fmt: skip
        dim, scale = features[feature].shape[1], features[feature].std()
        root = rng.normal(size=(dim, dim)) * scale / np.sqrt(dim)
        stored[mean_key] = features[feature].mean(axis=0) + rng.normal(size=dim) * scale
        stored[cov_key] = root @ root.T
        expected[metric] = closed_form_fd(features[feature], stored[mean_key], root)
    # the statistics alone (the images of a reference only serve precision/recall: tests/eval/test_scores.py)
    np.savez(tmp_path / "reference.npz", **stored)
    metrics = evaluate_files(tmp_path / "samples.npz", tmp_path / "reference.npz", inception=str(weights), batch=4,
                             device=torch.device("cpu"))  # fmt: skip
    assert metrics["reference_statistics"] == {"fid": "stored", "sfid": "stored"} and metrics["num_reference"] == 0
    for metric in ("fid", "sfid"):
        difference = abs(metrics[metric] - expected[metric])
        print(f"{metric}: haste {metrics[metric]:.10g}, closed form {expected[metric]:.10g}, |diff| {difference:.3g}")
        assert metrics[metric] == pytest.approx(expected[metric], rel=1e-9)
