"""Single-process training runs: the run folder, the phase change, exact resume, precision, divergence."""

from __future__ import annotations

import gc
import re
import weakref

import pytest
import torch
import yaml
from haste_teachers.digits_vit import DigitsViT

from haste_core import checkpoint, distributed, hookimpl, run_folder
from haste_core.errors import HasteError, RunFolderError
from haste_core.trainer import Trainer

from .conftest import TINY_RECIPE, run_module

CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def trainer_for(recipe, plugins) -> Trainer:
    resume_from = run_folder.resume_source(recipe)
    run_folder.write_recipe(recipe)
    return Trainer(recipe, plugins, CPU, resume_from=resume_from)


def test_run_folder_holds_recipe_checkpoints_events_and_samples(tiny, plugins):
    recipe = tiny("run.checkpoint_every=2")
    trainer_for(recipe, plugins).fit()
    run_dir = recipe.run_dir
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved == recipe.to_dict()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == [
        "latest.pt",
        "step_00000002.pt",
        "step_00000004.pt",
        "step_00000006.pt",
        "step_00000008.pt",
    ]
    state = checkpoint.load(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 8 and state["recipe"] == recipe.to_dict()
    assert state["phase"]["stopped"] == {"repa": 4, "attention": 4}
    assert state["alignments"] == {}  # the projector is gone with its alignment
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["student"]
    aligned = checkpoint.load(run_dir / "checkpoints" / "step_00000002.pt")
    assert set(aligned["alignments"]) == {"repa", "attention"}
    assert set(aligned["alignments"]["repa"]) == {f"projector.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")}
    assert aligned["alignments"]["attention"] == {}  # head mapping 'first' has no trainable weights
    assert [g["name"] for g in aligned["optimizer"]["param_groups"]] == ["student", "align:repa"]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (run_dir / "samples").iterdir()] == ["step_00000008.png"]


def test_phase_change_releases_teacher_capture_and_heads(tiny, plugins):
    trainer = trainer_for(tiny(), plugins)
    teacher = weakref.ref(trainer.teachers["teacher"])
    projector = weakref.ref(trainer.alignments["repa"].projector)
    for _ in range(3):
        trainer.train_step()
    assert trainer.module.capture is not None and teacher() is not None
    assert "image" in next(trainer.stream)
    trainer.train_step()  # step 4: the last aligned step; fixed_step fires after it
    gc.collect()
    assert trainer.teachers == {} and teacher() is None
    assert trainer.alignments == {} and projector() is None
    assert trainer.module.capture is None and len(trainer.module.alignments) == 0
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["student"]
    assert "image" not in next(trainer.stream)  # the data set stopped handing out images


@pytest.mark.parametrize("termination_step", [6, 2], ids=["resume-in-phase-I", "resume-in-phase-II"])
def test_resume_gives_identical_training(tiny, plugins, tmp_path, monkeypatch, termination_step):
    straight = trainer_for(tiny(f"termination.step={termination_step}", f"run.output_dir={tmp_path / 'a'}"), plugins)
    straight.fit()

    first = tiny(f"termination.step={termination_step}", f"run.output_dir={tmp_path / 'b'}", "run.max_steps=4")
    trainer_for(first, plugins).fit()
    second = tiny(f"termination.step={termination_step}", f"run.output_dir={tmp_path / 'b'}")
    if termination_step < 4:  # resumed after termination: the teacher must never be built
        monkeypatch.setattr(DigitsViT, "__init__", lambda *a, **k: pytest.fail("teacher built after termination"))
    resumed = trainer_for(second, plugins)
    assert resumed.step == 4 and bool(resumed.teachers) == (termination_step > 4)
    resumed.fit()

    for name, param in straight.student.state_dict().items():
        assert torch.equal(param, resumed.student.state_dict()[name]), name
    for name, param in straight.ema.state_dict().items():
        assert torch.equal(param, resumed.ema.state_dict()[name]), name
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)
    assert straight.plan.stopped == resumed.plan.stopped == {"repa": termination_step, "attention": termination_step}


def test_resume_never_refuses_a_folder_with_checkpoints(tiny, plugins):
    trainer_for(tiny("run.max_steps=2", "run.checkpoint_every=0"), plugins).fit()
    with pytest.raises(
        RunFolderError, match=re.escape("already holds checkpoints of this run and run.resume is 'never'")
    ):
        run_folder.resume_source(tiny("run.resume=never"))


class MetricsSpy:
    """A plugin object that records what haste_step_end receives."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    @hookimpl
    def haste_step_end(self, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self.logged.append(metrics)


def test_training_lowers_the_denoising_loss(tiny, plugins):
    trainer = trainer_for(tiny("run.max_steps=1000", "termination.step=1000", "data.global_batch_size=64"), plugins)
    spy = MetricsSpy()
    trainer.plugins.pm.register(spy, "spy")
    try:
        for _ in range(60):
            trainer.train_step()
    finally:
        trainer.plugins.pm.unregister(name="spy")
    losses = [m["loss/denoise"] for m in spy.logged]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_runs(tiny, plugins, dtype):
    trainer = trainer_for(tiny(f"precision.dtype={dtype}", "run.max_steps=3", "run.checkpoint_every=0"), plugins)
    trainer.fit()
    state = checkpoint.load(checkpoint.latest_path(trainer.recipe.run_dir))
    assert state["step"] == 3
    assert bool(state["scaler"]) == (dtype == "fp16")  # fp16 trains with a GradScaler, bf16 without
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())


def test_divergence_stops_with_a_clear_error(tiny, plugins):
    trainer = trainer_for(tiny("optimizer.lr=1e30", "optimizer.grad_clip=0"), plugins)
    with pytest.raises(HasteError, match=r"training diverged: .* became NaN or infinite by step"):
        trainer.fit()


def test_command_line_run_prints_progress_and_resumes(tmp_path):
    result = run_module("haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "starting: sit_micro_2 (0.33M parameters), 1 process(es) on cpu, Phase I (repa, attention)" in log
    assert "step 4: alignment 'repa' terminated (fixed_step: 4 aligned steps done)" in log
    assert "step 4: released teacher 'teacher'" in log and "Phase II" in log
    assert "step 8/8 | loss" in log and "| denoise only" in log
    again = run_module("haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=10")
    assert again.returncode == 0, again.stderr
    assert "resuming at step 8" in again.stderr and "step 10/10" in again.stderr
    assert "teacher digits_vit" not in again.stderr  # never built after termination
