"""FSDP2 (``distributed.strategy: fsdp2``) under real 2-process torchrun runs on the CPU (gloo): it trains through
the termination step with DDP's losses and weights, writes sharded checkpoints, and resumes from them on 2 and on 1
processes as DDP does; sharded checkpoints are read by the checkpoint readers and never run code."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from haste_core import distributed
from haste_core.errors import CheckpointError, RecipeError
from haste_core.train.trainer import Trainer
from haste_core.weights import checkpoint
from tests.conftest import TINY_RECIPE, run_module
from tests.train.test_accumulate import ADAM_EPS

# every 2 steps a checkpoint, all kept; a sample grid and attention pictures at steps 4 and 8 (gathered copies);
# Adam's eps keeps the rounding noise on gradients that are 0 in exact arithmetic (tests/train/test_accumulate.py)
# from being blown up to steps of ±lr
COMMON = ("run.checkpoint_every=2", "run.keep_checkpoints=0", "run.sample_every=4", ADAM_EPS)
FSDP2 = "distributed.strategy=fsdp2"
COMPILED = ("compile.student=true", "compile.backend=aot_eager")
ENV = {"OMP_NUM_THREADS": "1"}
STOPPED = {"repa": 4, "attention": 4}
CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def train(tmp_path: Path, name: str, *overrides: str, processes: int = 2) -> subprocess.CompletedProcess:
    launcher = ("torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m") if processes > 1 else ()
    result = run_module(
        *launcher, "haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", f"run.name={name}", *COMMON,
        *overrides, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def losses(run_dir: Path) -> dict[int, dict[str, float]]:
    """Every logged loss of a run, by step, from its TensorBoard event files."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    out: dict[int, dict[str, float]] = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith(("loss/", "align/")) and tag != "align/active":
            for event in events.Scalars(tag):
                out.setdefault(event.step, {})[tag] = event.value
    return out


def assert_same_losses(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], steps: range) -> None:
    assert sorted(a) == sorted(b) == list(steps)
    for step in steps:
        assert a[step].keys() == b[step].keys(), step
        for tag, value in a[step].items():
            assert b[step][tag] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, tag)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_fsdp2_trains_like_ddp_through_termination_resumes_on_two_and_one_process_and_in_bf16(tmp_path):
    train(tmp_path, "ddp")
    train(tmp_path, "fsdp2", FSDP2)
    ddp, fsdp2 = tmp_path / "ddp", tmp_path / "fsdp2"
    assert_same_losses(losses(ddp), losses(fsdp2), range(1, 9))
    assert losses(fsdp2)[4].keys() > losses(fsdp2)[5].keys()  # aligned until step 4, denoising only after it

    # sharded checkpoints: one folder per step, a shard file per process, each holding about half the weights
    saved = checkpoint.checkpoint_dir(fsdp2)
    assert sorted(p.name for p in saved.iterdir()) == [
        "latest.dcp", "step_00000002.dcp", "step_00000004.dcp", "step_00000006.dcp", "step_00000008.dcp",
    ]  # fmt: skip
    assert (saved / "latest.dcp").resolve() == (saved / "step_00000008.dcp").resolve()
    shards = sorted((saved / "step_00000008.dcp").glob("*.distcp"))
    assert len(shards) == 2
    whole = checkpoint.load(saved / "latest.dcp")
    weights_bytes = 4 * 4 * sum(t.numel() for t in whole["student"].values())  # student, EMA, Adam's two moments
    # about half each (a whole copy would be ≥ 1); the rest is per-tensor framing, large for a tiny model
    assert all(0.45 < shard.stat().st_size / weights_bytes < 0.7 for shard in shards)
    reference = checkpoint.load(checkpoint.latest_path(ddp))
    assert whole["step"] == reference["step"] == 8 and whole["phase"]["stopped"] == STOPPED
    assert_same_tensors(reference["student"], whole["student"])
    assert_same_tensors(reference["ema"], whole["ema"])
    assert sorted(p.name for p in (fsdp2 / "samples").iterdir()) == ["step_00000004.png", "step_00000008.png"]
    assert any((fsdp2 / "attention").iterdir())

    # resumed before the termination step on 2 processes, in micro-batches of 2, recomputing every other block,
    # with compiled blocks: the RNG states are restored, so the losses of steps 3..8 are the uninterrupted run's
    step2 = saved / "step_00000002.dcp"
    speed = ("data.micro_batch_size=2", "activation_checkpointing.every=2", *COMPILED)
    resumed = train(tmp_path, "resumed2", FSDP2, f"run.resume={step2}", *speed)
    assert "recompiles once for the new capture" in resumed.stderr
    resumed2 = losses(tmp_path / "resumed2")
    assert_same_losses({s: v for s, v in losses(ddp).items() if s > 2}, resumed2, range(3, 9))
    assert checkpoint.load_meta(checkpoint.latest_path(tmp_path / "resumed2"))["phase"]["stopped"] == STOPPED

    # resumed on 1 process: random streams restart from the seed (said in the log), exactly as DDP's do
    one = train(tmp_path, "resumed1", FSDP2, f"run.resume={step2}", processes=1)
    assert "written by 2 processes, this run has 1" in one.stderr
    train(tmp_path, "ddp_resumed1", f"run.resume={checkpoint.find_step(ddp, 2)}", processes=1)
    assert_same_losses(losses(tmp_path / "ddp_resumed1"), losses(tmp_path / "resumed1"), range(3, 9))
    single = checkpoint.find_step(tmp_path / "resumed1", 8)
    assert [p.name for p in single.glob("*.distcp")] == ["__0_0.distcp"]
    assert_same_tensors(
        checkpoint.load(single)["ema"], checkpoint.load(checkpoint.latest_path(tmp_path / "ddp_resumed1"))["ema"]
    )

    # bf16: parameters all-gathered in bf16, gradients reduced in fp32, autocast as under DDP
    train(tmp_path, "bf16", FSDP2, "run.max_steps=4", "precision.dtype=bf16")
    fp32, bf16 = losses(fsdp2), losses(tmp_path / "bf16")
    for step in range(1, 5):
        assert bf16[step]["loss/denoise"] == pytest.approx(fp32[step]["loss/denoise"], rel=0.03), step
    # step 1 predicts exactly 0 in both (the zero-initialised output layer); after it, bf16 arithmetic shows
    assert all(bf16[step]["loss/denoise"] != fp32[step]["loss/denoise"] for step in range(2, 5))
    out = tmp_path / "sampled"
    result = run_module(
        "haste_core.cli", "sample", str(checkpoint.latest_path(tmp_path / "bf16")), "--out", str(out),
        "--num-images", "4", "--steps", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(out.glob("*.png"))) == 4


def test_a_sharded_checkpoint_whose_metadata_would_run_code_is_refused(tmp_path):
    """DCP reads its .metadata with pickle; haste's reader admits only DCP's metadata classes."""
    folder = tmp_path / "step_00000001.dcp"
    checkpoint.sharded_checkpoint.save({"w": torch.ones(3)}, {"format": checkpoint.FORMAT, "step": 1}, folder)
    assert checkpoint.load(folder)["w"].tolist() == [1.0, 1.0, 1.0]
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(CheckpointError, match=r"\.metadata is not the metadata of a haste checkpoint.*pathlib"):
        checkpoint.load(folder)
    assert not marker.exists()


def test_a_sharded_checkpoint_cut_short_names_what_is_missing(tmp_path):
    folder = tmp_path / "step_00000001.dcp"
    checkpoint.sharded_checkpoint.save({"w": torch.ones(3)}, {"format": checkpoint.FORMAT, "step": 1}, folder)
    (folder / "meta.pt").unlink()
    with pytest.raises(CheckpointError, match=r"is not a complete sharded checkpoint \(it lacks meta.pt"):
        checkpoint.load_meta(folder)


def test_resuming_across_strategies_says_how_and_init_from_reads_a_sharded_checkpoint(tiny, plugins, tmp_path):
    Trainer(tiny("run.max_steps=2", FSDP2), plugins, CPU).fit()
    sharded = checkpoint.latest_path(tmp_path / "tiny")
    assert sharded.name == "latest.dcp"
    with pytest.raises(CheckpointError, match=r"is a sharded folder .* uses distributed.strategy=ddp.*run.init_from"):
        Trainer(tiny("run.name=other"), plugins, CPU, resume_from=sharded)
    # a new DDP run starts from its weights
    started = Trainer(tiny("run.name=other", f"run.init_from={sharded}"), plugins, CPU)
    assert_same_tensors(checkpoint.load(sharded)["student"], started.student.state_dict())


def test_a_policy_that_needs_the_gradient_probe_is_refused_under_fsdp2(tiny, plugins):
    recipe = tiny("termination={name: gradient_conflict, every: 2}", FSDP2)
    with pytest.raises(RecipeError, match=r"distributed.strategy: the gradient probe .* use distributed.strategy=ddp"):
        Trainer(recipe, plugins, CPU)
    assert not recipe.run_dir.exists()
