"""A checkpoint written before the layout change (commit 98fa087) still resumes, and trains on exactly as the code
of that time did: the fixture holds step 3 of tests/fixtures/tiny.yaml (Phase I, both alignments and their optimiser
state), and the losses and final EMA weights the old code produced from there to step 8.

The old and the new code give bit-identical results on one machine, but the last bit of a float32 kernel differs
between CPU models (AVX2 / AVX-512), so the comparison allows float32 rounding: 1e-6 on the losses, 1e-5 on each
EMA tensor's sum and norm (float64). A resume that lost state (optimizer moments, EMA, RNG, the phase) is off by
far more (~1e-3 on the loss after one step)."""

from __future__ import annotations

import json

import pytest
import torch

from haste_core import distributed
from haste_core.train import run_folder
from haste_core.train.trainer import Trainer
from tests.conftest import REPO
from tests.train.test_trainer import MetricsSpy

FIXTURE = REPO / "tests" / "fixtures" / "old_format_run"


def test_an_old_checkpoint_resumes_and_continues_exactly_as_before(tiny, plugins):
    expected = json.loads((FIXTURE / "continuation.json").read_text())
    source = FIXTURE / "checkpoints" / "step_00000003.pt"
    recipe = tiny("run.name=old_format", "run.checkpoint_every=0", f"run.resume={source}")
    assert run_folder.resume_source(recipe) == source  # the stored recipe is accepted as this recipe
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(recipe, plugins, env, resume_from=source)
    assert trainer.step == 3 and trainer.stage.active == ["repa", "attention"]
    spy = MetricsSpy()
    trainer.plugins.pm.register(spy, "spy")
    try:
        trainer.fit()
    finally:
        trainer.plugins.pm.unregister(name="spy")
    assert [str(step) for step in spy.steps] == list(expected["losses"])
    for metrics, values in zip(spy.logged, expected["losses"].values(), strict=True):
        for key in ("loss/total", "loss/denoise"):
            assert metrics[key] == pytest.approx(values[key], rel=1e-6), key
    ema = trainer.ema.state_dict()
    assert sorted(ema) == sorted(expected["ema_sum_and_norm"])
    for key, (total, norm) in expected["ema_sum_and_norm"].items():
        value = ema[key].double()
        assert (value.sum().item(), value.norm().item()) == pytest.approx((total, norm), rel=1e-5, abs=1e-6), key
