"""``haste sample`` never imports the plugin modules a checkpoint's recipe names (a checkpoint is data): only
installed plugins and those named with ``--plugin``; a checkpoint that needs a missing plugin says which and how."""

from __future__ import annotations

import re

import pytest
import torch

from haste_core import run
from haste_core.cli import main as haste
from tests.conftest import TINY_RECIPE

LAB_POLICY = """
from dataclasses import dataclass
from pathlib import Path
from haste_core import hookimpl
from haste_core.interfaces import Termination

with open(Path(__file__).with_name("imports.log"), "a") as log:  # every import of this module leaves a line
    log.write("imported\\n")

class LabNever(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        pass
    def update(self, step, metrics):
        return None

@hookimpl
def haste_register_terminations(registry):
    registry.add("lab_never", LabNever)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A checkpoint trained with a local plugin (its termination policy), and that plugin's file."""
    root = tmp_path_factory.mktemp("lab")
    plugin = root / "lab_policy.py"
    plugin.write_text(LAB_POLICY)
    args = [str(TINY_RECIPE), f"run.output_dir={root}", "run.max_steps=1", f"plugins=[{plugin}]",
            "termination={name: lab_never}"]  # fmt: skip
    assert run.main(args) == 0
    return root / "tiny" / "checkpoints" / "latest.pt", plugin


def sample(checkpoint, out, *extra) -> int:
    return haste(["sample", str(checkpoint), "--num-images", "2", "--out", str(out), "--sampler", "euler",
                  "--steps", "1", "--device", "cpu", *extra])  # fmt: skip


def imports(plugin) -> int:
    return plugin.with_name("imports.log").read_text().count("imported")


def test_a_checkpoint_needing_a_local_plugin_fails_naming_it_and_the_flag(lab, tmp_path, capsys):
    checkpoint, plugin = lab
    before = imports(plugin)
    assert sample(checkpoint, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert f"checkpoint {checkpoint} needs a plugin that is not loaded" in error
    assert "lab_never" in error and f"--plugin {plugin}" in error
    assert "Traceback" not in error
    assert imports(plugin) == before  # nothing the checkpoint names was run
    assert sample(checkpoint, tmp_path / "out", "--plugin", str(plugin)) == 0  # named by the user: loaded
    assert imports(plugin) == before + 1
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_plugins_a_checkpoint_names_relative_to_the_current_folder_are_not_imported(lab, tmp_path, monkeypatch):
    checkpoint, _ = lab
    state = torch.load(checkpoint, weights_only=True)
    state["recipe"] = {**state["recipe"], "plugins": ["evil.py"], "termination": {"name": "never"}}
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    (tmp_path / "evil.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    assert sample(crafted, tmp_path / "out") == 0  # the recipe needs nothing that is not installed
    assert not (tmp_path / "evil.py.ran").exists()
    assert re.fullmatch(r"\d+\.png", sorted(p.name for p in (tmp_path / "out").glob("*.png"))[0])


def test_export_to_a_reference_layout_imports_no_plugin_the_checkpoint_names(lab, tmp_path, capsys):
    checkpoint, plugin = lab
    before = imports(plugin)
    assert haste(["export", str(checkpoint), str(tmp_path / "repa.pt"), "--layout", "repa"]) == 2
    error = capsys.readouterr().err
    assert "needs a plugin that is not loaded" in error and f"--plugin {plugin}" in error
    assert imports(plugin) == before and not (tmp_path / "repa.pt").exists()
    assert (
        haste(["export", str(checkpoint), str(tmp_path / "repa.pt"), "--layout", "repa", "--plugin", str(plugin)]) == 0
    )
    assert imports(plugin) == before + 1 and (tmp_path / "repa.pt").is_file()
