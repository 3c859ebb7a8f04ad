"""Shared tensor operations and the metric window."""

from __future__ import annotations

import pytest
import torch

from haste_core.ops import attention_logits
from haste_core.train.metric_window import MetricWindow, format_metrics


def test_attention_logits_are_fp32_under_autocast():
    q, k = torch.randn(2, 3, 5, 8, dtype=torch.bfloat16), torch.randn(2, 3, 5, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = attention_logits(q, k, 0.25)
        rounded = (q * 0.25) @ k.transpose(-2, -1)  # what autocast alone would give
    assert logits.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    assert torch.allclose(logits, (q.float() * 0.25) @ k.float().transpose(-2, -1))


def test_window_averages_steps_and_refuses_changing_names():
    window = MetricWindow(torch.device("cpu"), global_batch=10)
    window.add({"loss/total": torch.tensor(1.0), "align/active": torch.tensor(1.0)})
    window.add({"loss/total": torch.tensor(3.0), "align/active": torch.tensor(1.0)})
    metrics = window.reduce()
    assert metrics["loss/total"] == 2.0 and metrics["align/active"] == 1.0
    assert metrics["perf/samples_per_s"] == pytest.approx(10 / metrics["perf/step_s"])
    assert metrics["perf/peak_mem_mb"] > 0
    window.add({"loss/total": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="metric names changed within a logging window"):
        window.add({"loss/denoise": torch.tensor(1.0)})


def test_progress_line():
    metrics = {
        "loss/total": 1.5, "loss/denoise": 0.5, "align/repa": -0.75, "align/attention/pair_1_2": 2.0,
        "align/active": 1.0, "optim/grad_norm": 0.25, "perf/step_s": 0.05, "perf/samples_per_s": 2560.0,
    }  # fmt: skip
    assert format_metrics(7, 10, metrics) == (
        "step 7/10 | loss 1.5000 | denoise 0.5000 | repa -0.7500 | grad 0.250 | 50.0 ms/step | 2560 samples/s | aligned"
    )
