"""The flow objective: interpolants, velocity targets and time sampling, against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from haste_objectives.flow import Flow

from haste_core.interfaces import TrainingPair


def test_linear_path_target_is_noise_minus_data():
    objective = Flow(Flow.Config(path="linear"))
    torch.manual_seed(0)
    x0 = torch.randn(256, 2, 4, 4)
    pair = objective.training_pair(x0)
    t = pair.t.view(-1, 1, 1, 1)
    noise = (pair.x_t - (1 - t) * x0) / t
    assert torch.allclose(pair.target, noise - x0, atol=1e-4)
    assert torch.allclose(pair.x_t, x0 + t * pair.target, atol=1e-5)


def test_cosine_path_is_variance_preserving_and_rates_are_derivatives():
    objective = Flow(Flow.Config(path="cosine"))
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    alpha, sigma = objective.alpha_sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t))
    h = 1e-6
    a_plus, s_plus = objective.alpha_sigma(t + h)
    a_minus, s_minus = objective.alpha_sigma(t - h)
    d_alpha, d_sigma = objective.alpha_sigma_rates(t)
    assert torch.allclose(d_alpha, (a_plus - a_minus) / (2 * h), atol=1e-6)
    assert torch.allclose(d_sigma, (s_plus - s_minus) / (2 * h), atol=1e-6)


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_time_sampling(path):
    torch.manual_seed(0)
    uniform = Flow(Flow.Config(path=path)).sample_time(100_000, torch.device("cpu"))
    assert uniform.min() >= 0 and uniform.max() <= 1 and abs(uniform.mean().item() - 0.5) < 0.01
    lognormal = Flow(Flow.Config(path=path, time_sampling="lognormal")).sample_time(100_000, torch.device("cpu"))
    assert abs(lognormal.median().item() - 0.5) < 0.01  # s = exp(n) has median 1, which maps to t = 0.5
    shifted = Flow(Flow.Config(path=path, time_sampling="lognormal", lognormal_mean=1.0)).sample_time(
        100_000, torch.device("cpu")
    )
    expected = math.e / (1 + math.e) if path == "linear" else 2 / math.pi * math.atan(math.e)
    assert abs(shifted.median().item() - expected) < 0.01


def test_loss_is_mean_squared_error_in_fp32():
    objective = Flow(Flow.Config())
    pred = torch.zeros(2, 1, 2, 2, dtype=torch.bfloat16)
    target = torch.full((2, 1, 2, 2), 3.0, dtype=torch.bfloat16)
    loss = objective.loss(pred, TrainingPair(x_t=target, t=torch.zeros(2), target=target))
    assert loss.dtype == torch.float32 and loss.item() == 9.0
