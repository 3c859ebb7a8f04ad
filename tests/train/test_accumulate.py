"""Gradient accumulation: a global batch in micro-batches trains exactly like the whole batch at once, across the
termination step, in one process and under a 2-process torchrun."""

from __future__ import annotations

import pytest
import torch

from haste_core import distributed
from haste_core.errors import RecipeError
from haste_core.train.accumulate import micro_slices
from haste_core.train.trainer import Trainer
from haste_core.weights import checkpoint
from tests.conftest import TINY_RECIPE, run_module

CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
# float32 rounding, grown over 8 Adam steps (the summation order of the gradients differs)
ATOL = 1e-5
# Some gradients are exactly 0 in exact arithmetic (the key bias: softmax ignores a shift shared by all keys), so
# both runs only see rounding noise there, which Adam's m/sqrt(v) would blow up to steps of ±lr. An eps far above
# that noise and far below the real gradients keeps Adam's steps elsewhere as they are.
ADAM_EPS = "optimizer.eps=1.0e-4"


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=1e-4, msg=key)


def record_logged(trainer: Trainer) -> list[dict[str, float]]:
    """The metrics of every logging step the trainer will take, appended as they are collected."""
    logged, collect = [], trainer.report.collect

    def recording(*args):
        logged.append(collect(*args))
        return logged[-1]

    trainer.report.collect = recording
    return logged


def test_micro_slices_cover_the_batch():
    assert micro_slices(8, 2) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert micro_slices(8, 0) == [slice(0, 8)]


def test_micro_batches_of_two_train_like_the_whole_batch(tiny, plugins):
    """8 steps (aligned until step 4, then denoising only): the same losses every step and the same weights."""
    runs = {}
    for micro in (0, 2):
        recipe = tiny(f"run.name=micro{micro}", f"data.micro_batch_size={micro}", ADAM_EPS)
        trainer = Trainer(recipe, plugins, CPU)
        logged = record_logged(trainer)
        trainer.fit()
        runs[micro] = (trainer, [{k: v for k, v in m.items() if k.startswith(("loss/", "align/"))} for m in logged])
    (whole, whole_losses), (micro, micro_losses) = runs[0], runs[2]
    assert whole.plan.stopped == micro.plan.stopped == {"repa": 4, "attention": 4}
    assert len(whole_losses) == 8 and whole_losses[0]["align/active"] == 1 and whole_losses[-1]["align/active"] == 0
    for a, b in zip(whole_losses, micro_losses, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=ATOL), key
    assert_same_weights(whole.student.state_dict(), micro.student.state_dict())
    assert_same_weights(whole.ema.state_dict(), micro.ema.state_dict())


def test_micro_batch_must_divide_the_process_batch(tiny):
    with pytest.raises(RecipeError, match=r"data.micro_batch_size.*3 does not divide the 8 samples"):
        tiny("data.micro_batch_size=3")


@pytest.mark.slow
def test_two_process_torchrun_accumulates_like_the_whole_batch(tmp_path):
    """Global batch 8 on 2 processes in micro-batches of 2 (DDP syncs once per step) ends with the weights of
    global batch 8 on 2 processes at once, through the termination step."""
    states = {}
    for micro in (0, 2):
        result = run_module(
            "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", f"run.name=micro{micro}",
            f"data.micro_batch_size={micro}", ADAM_EPS,
            env={"OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        states[micro] = checkpoint.load(tmp_path / f"micro{micro}" / "checkpoints" / "latest.pt")
    assert states[0]["phase"]["stopped"] == states[2]["phase"]["stopped"] == {"repa": 4, "attention": 4}
    assert_same_weights(states[0]["student"], states[2]["student"])
    assert_same_weights(states[0]["ema"], states[2]["ema"])
