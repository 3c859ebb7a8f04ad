"""Single-process training runs: the run folder, the phase change, exact resume, precision, divergence."""

from __future__ import annotations

import gc
import re
import weakref

import pytest
import torch
import yaml
from haste_teachers.digits_vit import DigitsViT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from haste_core import distributed, hookimpl
from haste_core.errors import CheckpointError, HasteError, RunFolderError
from haste_core.train import run_folder
from haste_core.train.trainer import Trainer
from haste_core.weights import checkpoint
from tests.conftest import TINY_RECIPE, run_module

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
    teacher = weakref.ref(trainer.stage.teachers["teacher"])
    projector = weakref.ref(trainer.stage.alignments["repa"].projector)
    for _ in range(3):
        trainer.train_step()
    assert trainer.module.capture is not None and teacher() is not None
    assert "image" in next(trainer.stream)
    trainer.train_step()  # step 4: the last aligned step; fixed_step fires after it
    gc.collect()
    assert trainer.stage.teachers == {} and teacher() is None
    assert trainer.stage.alignments == {} and projector() is None
    assert trainer.module.capture is None and len(trainer.module.alignments) == 0
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["student"]
    assert "image" not in next(trainer.stream)  # the data set stopped handing out images


def assert_same_training_state(a: Trainer, b: Trainer) -> None:
    for name, param in a.student.state_dict().items():
        assert torch.equal(param, b.student.state_dict()[name]), name
    for name, param in a.ema.state_dict().items():
        assert torch.equal(param, b.ema.state_dict()[name]), name
    state_a, state_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)
    assert a.stream.position() == b.stream.position()


@pytest.mark.parametrize(
    ("termination_step", "batch"),
    [(6, 8), (2, 8), (4, 512)],
    ids=["resume-in-phase-I", "resume-in-phase-II", "resume-at-termination-across-epochs"],
)
def test_resume_gives_identical_training(tiny, plugins, tmp_path, monkeypatch, termination_step, batch):
    settings = [f"termination.step={termination_step}", f"data.global_batch_size={batch}"]
    straight = trainer_for(tiny(*settings, f"run.output_dir={tmp_path / 'a'}"), plugins)
    straight.fit()

    trainer_for(tiny(*settings, f"run.output_dir={tmp_path / 'b'}", "run.max_steps=4"), plugins).fit()
    if termination_step <= 4:  # resumed at or after termination: the teacher must never be built
        monkeypatch.setattr(DigitsViT, "__init__", lambda *a, **k: pytest.fail("teacher built after termination"))
    resumed = trainer_for(tiny(*settings, f"run.output_dir={tmp_path / 'b'}"), plugins)
    assert resumed.step == 4 and bool(resumed.stage.teachers) == (termination_step > 4)
    resumed.fit()

    assert_same_training_state(straight, resumed)
    assert straight.plan.stopped == resumed.plan.stopped == {"repa": termination_step, "attention": termination_step}
    if batch == 512:
        assert straight.stream.position() == {"epoch": 3, "batch": 2}  # 2 batches per epoch: crossed 3 epochs


def test_a_named_checkpoint_starts_a_new_run_from_where_it_stood(tiny, plugins, tmp_path):
    straight = trainer_for(tiny(f"run.output_dir={tmp_path / 'a'}"), plugins)
    straight.fit()
    trainer_for(tiny(f"run.output_dir={tmp_path / 'b'}", "run.max_steps=4"), plugins).fit()
    source = tmp_path / "b" / "tiny" / "checkpoints" / "step_00000004.pt"
    branch = tiny(f"run.output_dir={tmp_path / 'c'}", "run.name=branch", f"run.resume={source}")
    resumed = trainer_for(branch, plugins)
    assert resumed.step == 4
    resumed.fit()
    assert_same_training_state(straight, resumed)
    assert [p.name for p in checkpoint.step_files(branch.run_dir)] == ["step_00000008.pt"]


def test_checkpoint_problems_are_found_before_anything_is_written(tiny, plugins, tmp_path):
    trainer_for(tiny("run.max_steps=4"), plugins).fit()
    source = tiny().run_dir / "checkpoints" / "step_00000004.pt"
    other = tiny(f"run.output_dir={tmp_path / 'new'}", "optimizer.lr=0.5", f"run.resume={source}")
    with pytest.raises(
        CheckpointError, match=re.escape("was written by a different recipe (optimizer.lr: 0.001 -> 0.5)")
    ):
        run_folder.resume_source(other)
    assert not (tmp_path / "new").exists()
    latest = tiny().run_dir / "checkpoints" / "latest.pt"
    latest.unlink()
    latest.write_bytes(source.read_bytes()[:1000])  # a truncated latest.pt, as a crash mid-copy would leave
    with pytest.raises(CheckpointError, match=re.escape("latest.pt cannot be read")):
        run_folder.resume_source(tiny())


class TerminationSpy:
    """Records, at each haste_alignment_terminated call, what the run looks like to observers."""

    def __init__(self, teacher: weakref.ref) -> None:
        self.teacher = teacher
        self.calls: list[tuple[str, int, list[str], bool]] = []

    @hookimpl
    def haste_alignment_terminated(self, run, step, alignment):
        gc.collect()
        self.calls.append((alignment, step, list(run.active_alignments), self.teacher() is not None))


def test_termination_hook_sees_the_phase_change_done(tiny, plugins):
    recipe = tiny("alignment.1.termination={name: fixed_step, step: 2}", "termination.step=5")
    trainer = trainer_for(recipe, plugins)
    spy = TerminationSpy(weakref.ref(trainer.stage.teachers["teacher"]))
    plugins.pm.register(spy, "termination_spy")
    try:
        trainer.fit()
    finally:
        plugins.pm.unregister(name="termination_spy")
    assert spy.calls == [("attention", 2, ["repa"], True), ("repa", 5, [], False)]


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
        self.steps: list[int] = []  # the step of each logged dict

    @hookimpl
    def haste_step_end(self, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self.logged.append(metrics)
            self.steps.append(step)


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


def test_fp16_steps_skipped_by_the_scaler_are_not_a_divergence(tiny, plugins):
    trainer = trainer_for(tiny("precision.dtype=fp16", "run.max_steps=3", "run.checkpoint_every=0"), plugins)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # overflows: every step is skipped
    before = {name: p.detach().clone() for name, p in trainer.student.named_parameters()}
    spy = MetricsSpy()
    plugins.pm.register(spy, "spy")
    try:
        trainer.fit()
    finally:
        plugins.pm.unregister(name="spy")
    assert [m["optim/skipped_steps"] for m in spy.logged] == [1.0, 1.0, 1.0]
    assert all("optim/grad_norm" not in m for m in spy.logged)  # no norm for windows of skipped steps only
    assert all(torch.equal(before[name], p) for name, p in trainer.student.named_parameters())


def test_resumed_run_hides_the_steps_it_logs_again(tiny, plugins):
    recipe = tiny()
    trainer_for(recipe, plugins).fit()  # steps 1..8, checkpoints at 4 and 8
    checkpoints = recipe.run_dir / "checkpoints"
    (checkpoints / "step_00000008.pt").unlink()  # as if the process had died after logging step 8
    (checkpoints / "latest.pt").unlink()
    (checkpoints / "latest.pt").hardlink_to(checkpoints / "step_00000004.pt")
    resumed = trainer_for(recipe, plugins)
    assert resumed.step == 4
    resumed.fit()
    events = EventAccumulator(str(recipe.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/denoise")] == list(range(1, 9))  # each step once
    trainer_for(recipe, plugins).fit()  # finished: does nothing, writes no new event file
    assert len(list((recipe.run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2


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
    with pytest.raises(HasteError, match=r"training diverged: .* became NaN or infinite at step"):
        trainer.fit()


def test_command_line_run_prints_progress_and_resumes(tmp_path):
    result = run_module("haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "starting: sit_micro_2 (0.33M parameters), 1 process(es) on cpu, Phase I (repa, attention)" in log
    assert "step 4: alignment 'repa' terminated (fixed_step: 4 aligned steps done)" in log
    assert "step 4: released teacher 'teacher'" in log and "Phase II" in log
    assert "step 8/8 | loss" in log and "| denoise only" in log
    assert re.search(r"step 4/8 \| .* \| elapsed \d+:\d\d:\d\d eta \d+:\d\d:\d\d$", log, flags=re.MULTILINE)
    assert "step 8/8 | " in log and "eta 0:00:00" in log
    log_file = tmp_path / "tiny" / "log.txt"
    first = log_file.read_text()
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] step 8/8 \| loss", first, flags=re.MULTILINE)
    assert "step 4: alignment 'repa' terminated" in first and "done: 8 steps" in first
    again = run_module("haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=10")
    assert again.returncode == 0, again.stderr
    assert "resuming at step 8" in again.stderr and "step 10/10" in again.stderr
    assert "teacher digits_vit" not in again.stderr  # never built after termination
    appended = log_file.read_text()
    assert appended.startswith(first) and "resuming at step 8" in appended and "step 10/10 | loss" in appended
