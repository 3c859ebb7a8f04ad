"""A checkpoint written before the layout change (commit 98fa087) still resumes, and trains on exactly as the code
of that time did: the fixture holds step 3 of tests/fixtures/tiny.yaml (Phase I, both alignments and their optimiser
state), and the losses and final EMA weights the old code produced from there to step 8."""

from __future__ import annotations

import hashlib
import json

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
        assert (metrics["loss/total"], metrics["loss/denoise"]) == (values["loss/total"], values["loss/denoise"])
    ema = trainer.ema.state_dict()
    digest = hashlib.sha256(b"".join(ema[k].contiguous().numpy().tobytes() for k in sorted(ema))).hexdigest()
    assert digest == expected["ema_sha256"]
