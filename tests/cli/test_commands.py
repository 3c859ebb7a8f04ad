"""The ``haste`` command: the verbs it lists, every verb's ``--help`` with each flag's default, the installed console
script under torchrun, and shipped recipes found by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from haste_core.cli import VERBS, verb_parser
from haste_core.cli import main as haste
from tests.conftest import TINY_RECIPE, run_module

HASTE = Path(sys.executable).parent / "haste"  # the console script pip installed next to this interpreter


def test_haste_alone_lists_every_verb_and_exits_0():
    result = subprocess.run([str(HASTE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for verb, (_, summary) in VERBS.items():
        assert f"    {verb}" in result.stdout and summary.split()[0] in result.stdout


def test_an_unknown_verb_names_the_choices():
    result = run_module("haste_core.cli", "trian")
    assert result.returncode == 2
    assert "invalid choice: 'trian'" in result.stderr and "'run'" in result.stderr


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_help_exits_0_and_shows_each_flag_with_its_default(verb, capsys):
    with pytest.raises(SystemExit) as exit_status:
        haste([verb, "--help"])
    assert exit_status.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: haste {verb}")
    text = " ".join(out.split())  # argparse wraps lines
    for action in verb_parser(verb)._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.option_strings[-1] in text, f"haste {verb} --help lacks {action.option_strings[-1]}"
        assert f"(default: {action.default})" in text, f"haste {verb} --help lacks the default of {action.dest}"


def test_torchrun_starts_the_console_script(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=1", "--no-python",
         str(HASTE), "run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "tiny" / "checkpoints" / "step_00000002.pt").is_file()


def test_check_prints_the_resolved_recipe_of_a_shipped_recipe_by_name(tmp_path):
    result = run_module("haste_core.cli", "check", "quickstart", f"run.output_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["run"]["name"] == "quickstart" and resolved["student"]["name"] == "sit_micro_2"
    assert "# ok: data digits" in result.stdout and not (tmp_path / "quickstart").exists()


def test_recipes_lists_and_copies_the_shipped_recipes(tmp_path):
    listing = run_module("haste_core.cli", "recipes")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip() and "recipes;" not in line}
    assert {"quickstart", "digits_vanilla", "haste_sit_xl2_dinov2b_in256"} <= set(lines)
    assert "HASTE, SiT-XL/2" in lines["haste_sit_xl2_dinov2b_in256"]
    copied = run_module("haste_core.cli", "recipes", "cp", "quickstart", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "quickstart.yaml").read_text() == (
        TINY_RECIPE.parents[2] / "recipes/quickstart.yaml"
    ).read_text()
    again = run_module("haste_core.cli", "recipes", "cp", "quickstart", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    unknown = run_module("haste_core.cli", "recipes", "cp", "quikstart", cwd=tmp_path)
    assert unknown.returncode == 2 and "no shipped recipe is called 'quikstart'" in unknown.stderr


def test_a_recipe_that_is_neither_a_file_nor_a_shipped_name_is_refused(tmp_path):
    result = run_module("haste_core.cli", "check", "nothing_like_this", cwd=tmp_path)
    assert result.returncode == 2
    assert "recipe file nothing_like_this does not exist, and no shipped recipe has that name" in result.stderr
    assert "quickstart" in result.stderr
