"""What a run is: local plugin paths stored resolved (the saved recipe reruns from any folder), and observer
plugins not part of a run's identity (adding or removing a monitor resumes; changing training does not)."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.errors import CheckpointError, RunFolderError
from haste_core.train import run_folder
from haste_core.train.trainer import Trainer
from haste_core.weights import checkpoint
from tests.conftest import TINY_RECIPE

ENV = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
MONITOR = """
from haste_core import hookimpl

@hookimpl
def haste_step_end(run, step, metrics):
    with open(run.run_dir / "monitored_steps.txt", "a") as handle:
        handle.write(f"{step}\\n")
"""


def train(recipe, plugins):
    """What ``haste run`` does in one process: decide fresh or resume, write recipe.yaml, train."""
    source = run_folder.resume_source(recipe)
    run_folder.write_recipe(recipe)
    Trainer(recipe, plugins, ENV, resume_from=source).fit()
    return source


@pytest.fixture
def lab(tmp_path):
    """A recipe folder holding the tiny recipe and a monitor plugin file next to it."""
    folder = tmp_path / "lab"
    folder.mkdir()
    shutil.copy(TINY_RECIPE, folder / "tiny.yaml")
    (folder / "step_monitor.py").write_text(MONITOR)
    return folder


def test_local_plugin_paths_are_stored_resolved_and_the_saved_recipe_reruns_elsewhere(lab, tmp_path, monkeypatch):
    monkeypatch.chdir(lab)
    common = [f"run.output_dir={tmp_path / 'runs'}", "run.max_steps=2", "run.checkpoint_every=2"]
    recipe, plugins = load_recipe("tiny.yaml", [*common, "plugins=[step_monitor.py]"])
    train(recipe, plugins)
    plugin_file = str(lab / "step_monitor.py")
    saved = recipe.run_dir / "recipe.yaml"
    assert yaml.safe_load(saved.read_text())["plugins"] == [plugin_file]
    assert checkpoint.load(checkpoint.latest_path(recipe.run_dir))["recipe"]["plugins"] == [plugin_file]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again, again_plugins = load_recipe(saved, ["run.max_steps=3"])
    assert again.plugins == (plugin_file,)
    assert again_plugins.sources["step_monitor"] == f"local module {plugin_file}"
    assert train(again, again_plugins) == checkpoint.latest_path(recipe.run_dir)  # the same run, resumed
    assert (recipe.run_dir / "monitored_steps.txt").read_text().split() == ["1", "2", "3"]


def test_adding_or_removing_a_monitor_resumes_but_changing_training_is_a_different_run(lab, tmp_path):
    common = [f"run.output_dir={tmp_path / 'runs'}", "run.checkpoint_every=2"]
    recipe, plugins = load_recipe(lab / "tiny.yaml", [*common, "run.max_steps=2"])
    train(recipe, plugins)
    latest = checkpoint.latest_path(recipe.run_dir)

    with_monitor = load_recipe(lab / "tiny.yaml", [*common, "run.max_steps=4", "plugins=[step_monitor.py]"])
    assert train(*with_monitor) == latest  # resumed with the monitor added
    assert (recipe.run_dir / "monitored_steps.txt").read_text().split() == ["3", "4"]
    without = load_recipe(lab / "tiny.yaml", [*common, "run.max_steps=6"])
    assert train(*without) == checkpoint.latest_path(recipe.run_dir)  # and without it again
    assert checkpoint.load(checkpoint.latest_path(recipe.run_dir))["step"] == 6

    for change, shown in [
        ("optimizer.lr=0.5", "optimizer.lr: 0.001 -> 0.5"),
        ("alignment.0.weight=0.25", "alignment.0.weight: 0.5 -> 0.25"),
        ("termination={name: never}", "termination.name: 'fixed_step' -> 'never'"),
    ]:
        changed, _ = load_recipe(lab / "tiny.yaml", [*common, "run.max_steps=8", change])
        with pytest.raises(RunFolderError, match="already holds a different run") as caught:
            run_folder.resume_source(changed)
        assert shown in str(caught.value)


def test_checkpoint_resumed_by_path_ignores_the_plugins_list_but_not_the_components(tiny):
    state = {"recipe": tiny("plugins=[haste_tensorboard.monitor]").to_dict()}
    run_folder.check_checkpoint_recipe(state, tiny(), "ckpt.pt")  # a monitor less: the same run
    with pytest.raises(CheckpointError, match=r"different recipe \(student.name: 'sit_micro_2' -> 'sit_micro_1'"):
        run_folder.check_checkpoint_recipe(state, tiny("student.name=sit_micro_1"), "ckpt.pt")
