"""Fréchet distance between Gaussians fitted to features, with a numerically safe matrix square root.

FD = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^½). The ADM suite and pytorch-fid compute the last term with
``scipy.linalg.sqrtm(Σ₁Σ₂)``, which is unreliable when the covariances are (near) singular, as they are whenever
there are fewer samples than feature dimensions: it returns complex values or a wrong root, and those codes add
ε·I and retry. Here the trace is computed from symmetric eigen-decompositions instead:
tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½), where Σ₁^½ Σ₂ Σ₁^½ is symmetric positive semi-definite, so its eigenvalues are
real. Eigenvalues below max|λ|·n·ε (float64 round-off, not signal) are set to 0 before the square roots: the
square root of a round-off eigenvalue of 1e-14 would otherwise add 1e-7 per dimension, which is how the
``sqrtm`` route loses accuracy on rank-deficient covariances (tests/eval/test_scores.py). Everything runs in float64.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of N×D features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows of shape N×D, got {list(features.shape)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _drop_round_off(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off (negative or below max|λ|·n·ε) set to exactly 0."""
    tolerance = np.abs(values).max(initial=0.0) * len(values) * np.finfo(np.float64).eps
    return np.where(values > tolerance, values, 0.0)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_drop_round_off(values))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ₁Σ₂)^½) for symmetric PSD Σ₁, Σ₂, exact to round-off even for singular matrices."""
    root = psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    middle = root @ np.asarray(sigma2, dtype=np.float64) @ root
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(_drop_round_off(values)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (FID when the statistics are Inception features)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"statistics do not match: means {list(mu1.shape)} and {list(mu2.shape)}, "
            f"covariances {list(sigma1.shape)} and {list(sigma2.shape)}"
        )
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def frechet_distance_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N₁×D and N₂×D)."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
