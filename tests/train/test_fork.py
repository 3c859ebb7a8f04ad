"""Forked runs (a termination sweep's branches) and the sweep itself, on the tiny recipe."""

from __future__ import annotations

import csv
import re

import pytest
import torch
import yaml

from haste_core.cli import main as haste
from haste_core.errors import CheckpointError
from haste_core.train import fork, run_folder
from haste_core.weights import checkpoint
from tests.conftest import TINY_RECIPE
from tests.train.test_trainer import assert_same_training_state, trainer_for

NEVER = "termination={name: never}"


def test_a_forked_branch_equals_a_run_that_stops_at_k_from_the_start(tiny, plugins, tmp_path):
    straight = trainer_for(tiny("termination.step=3", "run.max_steps=6", f"run.output_dir={tmp_path / 'a'}"), plugins)
    straight.fit()
    parent = tiny(
        NEVER, "run.checkpoint_every=3", "run.max_steps=6", f"run.output_dir={tmp_path / 'p'}", "run.name=parent"
    )
    trainer_for(parent, plugins).fit()
    parent_checkpoint = checkpoint.step_path(parent.run_dir, 3)

    branch = tiny("termination.step=3", f"run.output_dir={tmp_path / 'b'}", "run.name=stop_3", "run.max_steps=5")
    run_folder.write_recipe(branch)
    fork.write(branch.run_dir, parent_checkpoint, 3)
    assert run_folder.resume_source(branch) == parent_checkpoint.resolve()
    forked = trainer_for(branch, plugins)
    assert forked.step == 3 and forked.stage.teachers == {} and forked.stage.alignments == {}
    assert [group["name"] for group in forked.optimizer.param_groups] == ["student"]
    forked.fit()  # to step 5, then resumed like any run from its own checkpoint
    assert [p.name for p in checkpoint.step_files(branch.run_dir)] == ["step_00000004.pt", "step_00000005.pt"]
    again = tiny("termination.step=3", "run.max_steps=6", f"run.output_dir={tmp_path / 'b'}", "run.name=stop_3")
    assert run_folder.resume_source(again) == checkpoint.latest_path(branch.run_dir)
    resumed = trainer_for(again, plugins)
    resumed.fit()

    assert_same_training_state(straight, resumed)
    assert resumed.plan.stopped == straight.plan.stopped == {"repa": 3, "attention": 3}
    assert resumed.plan.fired == straight.plan.fired == {"run": 3}
    assert parent_checkpoint.is_file() and not any((branch.run_dir / "checkpoints").glob("step_00000003.pt"))


def test_a_branch_must_share_everything_but_the_termination_with_its_parent(tiny, plugins, tmp_path):
    parent = tiny(NEVER, "run.checkpoint_every=2", "run.max_steps=2", f"run.output_dir={tmp_path / 'p'}")
    trainer_for(parent, plugins).fit()
    other = tiny("termination.step=2", "optimizer.lr=0.5", f"run.output_dir={tmp_path / 'b'}")
    run_folder.write_recipe(other)
    fork.write(other.run_dir, checkpoint.step_path(parent.run_dir, 2), 2)
    with pytest.raises(CheckpointError, match=re.escape("differ in more than the termination policy (optimizer.lr")):
        run_folder.resume_source(other)
    stopped = tiny("termination.step=1", "run.max_steps=2", f"run.output_dir={tmp_path / 's'}")
    trainer_for(stopped, plugins).fit()  # stops aligning after step 1: cannot be forked at step 2
    branch = tiny("termination.step=2", f"run.output_dir={tmp_path / 'c'}")
    run_folder.write_recipe(branch)
    fork.write(branch.run_dir, checkpoint.step_path(stopped.run_dir, 2), 2)
    with pytest.raises(CheckpointError, match="had already stopped repa after step 1"):
        trainer_for(branch, plugins)


def score_by_weights(trainer) -> float:
    """A deterministic stand-in score for the sweep test: the mean absolute EMA weight."""
    weights = torch.cat([p.detach().flatten() for p in trainer.ema.model.parameters()])
    return weights.abs().mean().item()


def test_sweep_writes_its_table_and_plot_with_every_run(tmp_path, capsys):
    status = haste([
        "sweep-termination", str(TINY_RECIPE), "--at", "4,2", "--score", "tests.train.test_fork:score_by_weights",
        f"run.output_dir={tmp_path}", "run.max_steps=6", "run.checkpoint_every=0",
        "termination.watch=[{name: fixed_step, step: 3}]",
    ])  # fmt: skip
    assert status == 0
    folder = tmp_path / "tiny-sweep"
    with (folder / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["run"], row["last_aligned_step"]) for row in rows] == [
        ("never_align", "0"), ("stop_2", "2"), ("stop_4", "4"), ("parent", ""),
    ]  # fmt: skip
    assert len({row["score"] for row in rows}) == 4 and all(float(row["score"]) > 0 for row in rows)
    assert (folder / "sweep.png").stat().st_size > 1000
    markdown = (folder / "sweep.md").read_text()
    assert "fixed_step after step 3" in markdown and "| stop_2 | 2 |" in markdown
    assert markdown in capsys.readouterr().out
    for k in (2, 4):  # each branch names its parent checkpoint and holds only its own
        point = yaml.safe_load((folder / f"stop_{k}" / "fork.yaml").read_text())
        assert point == {"parent": str(checkpoint.step_path(folder / "parent", k)), "step": k}
        assert [p.name for p in checkpoint.step_files(folder / f"stop_{k}")] == ["step_00000006.pt"]
    assert sorted(p.name for p in checkpoint.step_files(folder / "parent"))[:2] == [
        "step_00000002.pt", "step_00000004.pt"
    ]  # fmt: skip
    assert checkpoint.load(folder / "never_align" / "checkpoints" / "latest.pt")["alignments"] == {}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--at", "0,8"], "--at needs steps between 1 and 7 (run.max_steps is 8); got [0, 8]"),
        (["--at", "2,x"], "--at takes comma-separated whole steps"),
        (["--at", "2", "--score", "fid"], "--score fid reads the recipe's in-training FID, but its eval section"),
        (["--at", "2", "--score", "haste_core:nothing"], "haste_core has no function 'nothing'"),
    ],
)
def test_sweep_refuses_bad_arguments_before_training(tmp_path, capsys, arguments, message):
    assert (
        haste(
            [
                "sweep-termination",
                str(TINY_RECIPE),
                *arguments,
                f"run.output_dir={tmp_path}",
                *(["--score", "tests.train.test_fork:score_by_weights"] if "--score" not in arguments else []),
            ]
        )
        == 2
    )
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
