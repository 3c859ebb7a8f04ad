"""Adaptive policies under a real 2-process torchrun (gloo): the gradient probe runs outside DDP on every rank,
its figures are averaged so both ranks stop the same alignment at the same step, and the ranks stay identical."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY_RECIPE, run_module


@pytest.mark.slow
def test_probe_and_plateau_decide_alike_on_every_rank(tmp_path):
    result = run_module(
        "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "plugins=[rank_report.py]",
        "alignment.1.termination={name: plateau, metric: align/attention, window: 2, tolerance: 1.0}",
        "termination={name: gradient_conflict, every: 2, threshold: 1.0, patience: 3}",
        "termination.watch=[{name: fade, start: 1, steps: 2}]",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "tiny"
    reports = [json.loads((run_dir / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["terminated"] == {"attention": 4, "repa": 6} for r in reports)  # plateau at its 2nd check
    assert reports[0]["student_sha256"] == reports[1]["student_sha256"]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("grad/cos/repa")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("grad/cos/attention")] == [2, 4]
    assert [(e.step, e.value) for e in events.Scalars("termination/would_fire/fade")] == [(2, 2.0)]
