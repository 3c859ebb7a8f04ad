"""Recipes: every shipped one validates; overrides; bad input fails early with the YAML path and the choices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from haste_core.config.recipe import load_recipe, validate
from haste_core.errors import HasteError, PluginError, RecipeError, RunFolderError
from haste_core.train.run_folder import resume_source
from haste_core.weights import checkpoint
from tests.conftest import REPO, TINY_RECIPE, run_module

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, plugins):
    recipe, _ = load_recipe(path)
    header = path.read_text().splitlines()[:12]
    assert any(("haste_core.run" in line or "haste run" in line) and line.startswith("#") for line in header), (
        f"{path.name} lacks its command"
    )
    assert recipe.run.max_steps > 0


def test_resolved_recipe_round_trips(tiny, plugins):
    recipe = tiny("alignment.1.weight=0.25")
    again = validate(yaml.safe_load(recipe.to_yaml()), plugins)
    assert again.to_dict() == recipe.to_dict()
    assert again.alignments[1].weight == 0.25
    assert recipe.to_dict()["alignment"][0] == {
        "name": "repa", "student_block": 1, "teacher_block": -1, "projector_dim": 32,
        "weight": 0.5, "teacher": "teacher",
    }  # fmt: skip


def test_overrides_are_parsed_as_yaml_and_checked(tiny):
    recipe = tiny("optimizer.lr=3e-4", "alignment.1.pairs=[[0, 1]]", "ema.decay=0.5", "student.qk_norm=true")
    assert recipe.optimizer.lr == 3e-4
    assert recipe.alignments[1].config.pairs == ((0, 1),)
    assert recipe.ema.decay == 0.5 and recipe.student.config.qk_norm is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["optimiser.lr=1"],
            "optimiser: unknown section; unknown key 'optimiser' (did you mean 'optimizer'?)",
        ),
        (
            ["alignment.5.weight=1"],
            "override 'alignment.5.weight=1': alignment.5 does not exist (2 entries, 0..1)",
        ),
        (
            ["student.depth=3"],
            "student.depth: unknown key 'depth'; valid keys: class_dropout_prob, mlp_ratio, qk_norm",
        ),
        (
            ["student.name=sit_xxl_2"],
            "student.name: unknown student 'sit_xxl_2' (did you mean 'sit_xl_2'?); available: dit_b_2,",
        ),
        (
            ["alignment.1.pair=[[1, 2]]"],
            "alignment[1].pair: unknown key 'pair' (did you mean 'pairs'?); valid keys: chunk_elements, heads, kind, "
            "pair_weights, pairs, query_fraction, temperature",
        ),
        (["optimizer.lr=fast"], "optimizer.lr: expected a number, got str 'fast'"),
        (["run.max_steps=2.5"], "run.max_steps: expected an integer, got float 2.5"),
        (
            ["objective.path=linar"],
            "objective.path: 'linar' is not a valid choice (did you mean 'linear'?); choose one of 'linear', 'cosine'",
        ),
        (
            ["alignment.1.pairs=[[30, 2]]"],
            "alignment[1].pairs: student block 30 does not exist (sit_micro_2 has blocks 0..3)",
        ),
        (
            ["alignment.1.pairs=[[1, 9]]"],
            "alignment[1].pairs: teacher block 9 does not exist (digits_vit has blocks 0..3)",
        ),
        (
            ["alignment.0.student_block=4"],
            "alignment[0].student_block: student block 4 does not exist (sit_micro_2 has blocks 0..3)",
        ),
        (
            ["alignment.1.pairs=[1, 2]"],
            "alignment[1].pairs[0]: expected a list (list of [int, int]), got int 1",
        ),
        (["termination.step=0"], "termination.step: must be at least 1, got 0"),
        (
            ["teacher.weights=/no/such/file.pt"],
            "teacher.weights: weights file '/no/such/file.pt' does not exist",
        ),
        (["run.resume=/no/such/ckpt.pt"], "run.resume: checkpoint '/no/such/ckpt.pt' does not exist"),
        (["data.global_batch_size=0"], "data.global_batch_size: expected a positive integer, got 0"),
        (
            ["data.global_batch_size=4096"],
            "data.global_batch_size: 4096 is larger than the training set (1438 items of digits); use at most 1438",
        ),
        (["alignment.0.teacher=dino"], "alignment[0].teacher: unknown teacher key 'dino'; defined: teacher"),
        (
            ["termination=null"],
            "termination: alignment[0] has no termination policy; add a run-wide 'termination' section",
        ),
        (["run.name=a/b"], "run.name: 'a/b' is not a folder name"),
    ],
)
def test_bad_recipes_name_the_path_and_the_choices(tiny, overrides, message):
    with pytest.raises(RecipeError) as caught:
        tiny(*overrides)
    assert message in str(caught.value)


def test_batch_must_divide_over_processes(plugins):
    with pytest.raises(
        RecipeError,
        match=re.escape(
            "data.global_batch_size: 8 does not divide over 3 processes (WORLD_SIZE=3); "
            "use a multiple of 3, such as 6 or 9"
        ),
    ):
        load_recipe(TINY_RECIPE, world_size=3)


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(TINY_RECIPE.read_text())
    raw["run"]["output_dir"] = str(tmp_path / "runs")
    mutate(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_structural_mistakes(tmp_path, plugins):
    def both_teacher_forms(raw):
        raw["teachers"] = {"other": raw["teacher"]}

    def no_alignment_but_termination(raw):
        del raw["alignment"], raw["teacher"]

    def unused_teacher(raw):
        raw["teachers"] = {"a": raw.pop("teacher"), "b": {"name": "digits_vit", "weights": "none"}}
        raw["alignment"] = [dict(node, teacher="a") for node in raw["alignment"]]

    cases = {
        both_teacher_forms: "teachers: give either 'teacher' (one teacher) or 'teachers'",
        no_alignment_but_termination: "termination: there is no alignment to terminate",
        unused_teacher: "teachers.b: no alignment uses this teacher",
    }
    for mutate, message in cases.items():
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(_write(tmp_path, mutate))


def test_several_teachers_by_key(tmp_path, plugins):
    def two_teachers(raw):
        raw["teachers"] = {"features": raw.pop("teacher"), "maps": {"name": "digits_vit", "weights": "none"}}
        raw["alignment"][0]["teacher"] = "features"
        raw["alignment"][1]["teacher"] = "maps"

    recipe, _ = load_recipe(_write(tmp_path, two_teachers))
    assert [node.teacher for node in recipe.alignments] == ["features", "maps"]
    assert set(recipe.teacher_specs) == {"features", "maps"}


def test_cli_errors_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "runs"
    result = run_module("haste_core.run", str(TINY_RECIPE), f"run.output_dir={out}", "alignment.1.pairs=[[30, 2]]")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: alignment[1].pairs: student block 30 does not exist (sit_micro_2 has blocks 0..3)"
    )
    assert not out.exists()
    plugin_result = run_module(
        "haste_core.run", str(TINY_RECIPE), f"run.output_dir={out}", "plugins=[no_such_lab_module]"
    )
    assert plugin_result.returncode == 2
    assert (
        "plugins: local plugin module 'no_such_lab_module' failed to import: ModuleNotFoundError"
        in plugin_result.stderr
    )
    assert not out.exists()
    missing = run_module("haste_core.run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "recipe file" in missing.stderr and "does not exist" in missing.stderr
    usage = run_module("haste_core.run", str(TINY_RECIPE), "--lr=3")
    assert usage.returncode == 2 and "usage: haste run [-h] [--check] recipe [key.path=value ...]" in usage.stderr


def test_check_prints_the_resolved_recipe_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    result = run_module("haste_core.run", str(TINY_RECIPE), f"run.output_dir={out}", "--check")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["optimizer"] == {
        "name": "adamw", "lr": 1.0e-3, "betas": [0.9, 0.999], "eps": 1.0e-8, "weight_decay": 0.0, "grad_clip": 1.0,
        "warmup_steps": 0,
    }  # fmt: skip
    assert "# ok: data digits x[1, 8, 8] (1438 items); student sit_micro_2 (4 blocks, 4 heads, grid 4)" in result.stdout
    assert "fresh start" in result.stdout
    assert not out.exists()


def test_run_folder_holding_another_run_is_refused(tiny, tmp_path):
    recipe = tiny()
    recipe.run_dir.mkdir(parents=True)
    other = tiny("optimizer.lr=0.5")
    (recipe.run_dir / "recipe.yaml").write_text(other.to_yaml())
    assert resume_source(recipe) is None  # no checkpoint yet: the other run failed early, the folder is free
    saved = checkpoint.save({"step": 1, "recipe": other.to_dict()}, recipe.run_dir, 1, keep=0)
    before = (recipe.run_dir / "recipe.yaml").read_text()
    with pytest.raises(RunFolderError, match=re.escape("already holds a different run (optimizer.lr: 0.5 -> 0.001)")):
        resume_source(recipe)
    assert (recipe.run_dir / "recipe.yaml").read_text() == before
    assert resume_source(tiny("optimizer.lr=0.5", "run.max_steps=50")) == saved.with_name("latest.pt")  # longer: ok


def test_folder_with_foreign_files_is_refused(tiny):
    recipe = tiny()
    recipe.run_dir.mkdir(parents=True)
    (recipe.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a haste run folder"):
        resume_source(recipe)


def test_plugin_errors_are_haste_errors():
    assert issubclass(PluginError, HasteError) and issubclass(RecipeError, HasteError)
