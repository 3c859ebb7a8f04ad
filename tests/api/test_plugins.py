"""Plugin loading: entry points, local modules, blocking, autoload switch, duplicates, typos, broken imports."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from haste_core import __version__
from haste_core.errors import PluginError
from haste_core.interfaces import FAMILIES
from haste_core.plugins import load_plugins
from tests.conftest import TINY_RECIPE, run_module

BUILT_IN = {
    "students.sit", "teachers.digits_vit", "alignment.repa", "alignment.attention", "termination.never",
    "termination.fixed_step", "objectives.flow", "data.digits", "monitor.tensorboard", "students.dit",
    "students.mmdit", "objectives.ddpm", "teachers.dinov2", "teachers.clip", "teachers.mae", "termination.fixed_epoch",
    "termination.plateau", "termination.gradient_conflict", "termination.fade", "data.latents", "data.image_folder",
    "data.coco", "monitor.wandb", "data.digit_scenes", "teachers.scenes_vit",
}  # fmt: skip

POLICY_MODULE = """
from dataclasses import dataclass
from haste_core import hookimpl
from haste_core.interfaces import Termination

class StopAtOnce(Termination):
    @dataclass(kw_only=True, frozen=True)
    class Config:
        pass
    def update(self, step, metrics):
        return None

@hookimpl
def haste_register_terminations(registry):
    registry.add({name!r}, StopAtOnce)
"""


def make_distribution(root: Path, dist: str, version: str, module: str, source: str, entry_name: str) -> Path:
    """A real installed distribution on disk (module + .dist-info with an entry point), found by importlib."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[haste]\n{entry_name} = {module}\n")
    return root


def test_built_in_plugins_load_through_entry_points(plugins):
    names = {record["name"] for record in plugins.describe()}
    assert names == BUILT_IN
    assert {record["source"] for record in plugins.describe()} == {f"haste-diffusion {__version__}"}
    assert "sit_xl_2" in plugins.registry("students") and "digits_vit" in plugins.registry("teachers")
    assert set(plugins.registries) == set(FAMILIES)


def counts(plugins) -> str:
    """The listing's last line for these loaded plugins ("N plugins, M components")."""
    return f"{len(plugins.describe())} plugins, {sum(len(r) for r in plugins.registries.values())} components"


def test_listing_command_shows_plugins_versions_hooks_and_names(plugins):
    result = run_module("haste_core.cli", "plugins")
    assert result.returncode == 0, result.stderr
    assert f"teachers.digits_vit  [haste-diffusion {__version__}]" in result.stdout
    assert "  hooks: haste_register_teachers" in result.stdout
    assert "  teachers: digits_vit" in result.stdout
    assert "sit_micro_1, sit_micro_2" in result.stdout
    assert "haste_step_end" in result.stdout  # the TensorBoard monitor's hooks
    assert counts(plugins) in result.stdout


def test_third_party_plugin_is_a_peer(tmp_path, plugins):
    make_distribution(
        tmp_path,
        "haste-fancy-stop",
        "1.2.3",
        "haste_fancy_stop",
        POLICY_MODULE.format(name="fancy_stop"),
        "fancy",
    )
    result = run_module("haste_core.cli", "plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "fancy  [haste-fancy-stop 1.2.3]" in result.stdout
    assert "  terminations: fancy_stop" in result.stdout
    plugins_n, components_n = len(plugins.describe()), sum(len(r) for r in plugins.registries.values())
    assert f"{plugins_n + 1} plugins, {components_n + 1} components" in result.stdout


def test_blocking_a_plugin_removes_its_components(tmp_path, plugins):
    make_distribution(
        tmp_path,
        "haste-fancy-stop",
        "1.2.3",
        "haste_fancy_stop",
        POLICY_MODULE.format(name="fancy_stop"),
        "fancy",
    )
    env = {"PYTHONPATH": str(tmp_path), "HASTE_BLOCK_PLUGINS": "fancy, monitor.tensorboard"}
    result = run_module("haste_core.cli", "plugins", env=env)
    assert result.returncode == 0, result.stderr
    assert "fancy" not in result.stdout and "monitor.tensorboard" not in result.stdout
    components_n = sum(len(r) for r in plugins.registries.values())  # the monitor registers none
    assert f"{len(plugins.describe()) - 1} plugins, {components_n} components" in result.stdout


def test_duplicate_component_names_fail_naming_both_plugins(tmp_path):
    make_distribution(tmp_path, "haste-clash", "0.1", "haste_clash", POLICY_MODULE.format(name="fixed_step"), "clash")
    result = run_module("haste_core.cli", "plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert "termination 'fixed_step' is registered twice" in result.stderr
    assert "'termination.fixed_step'" in result.stderr and "'clash'" in result.stderr
    assert "HASTE_BLOCK_PLUGINS=" in result.stderr


def test_plugin_that_fails_to_import_is_named(tmp_path):
    make_distribution(tmp_path, "haste-broken", "0.2", "haste_broken", "import numpy_that_does_not_exist\n", "broken")
    result = run_module("haste_core.cli", "plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert "plugin 'broken' (haste_broken, from haste-broken 0.2) failed to import" in result.stderr
    assert "ModuleNotFoundError" in result.stderr and "HASTE_BLOCK_PLUGINS=broken" in result.stderr
    result = run_module("haste_core.cli", "plugins", env={"PYTHONPATH": str(tmp_path), "HASTE_BLOCK_PLUGINS": "broken"})
    assert result.returncode == 0, result.stderr


def test_misspelled_hook_fails_at_load(tmp_path, monkeypatch):
    (tmp_path / "typo_plugin.py").write_text(
        "from haste_core import hookimpl\n\n@hookimpl\ndef haste_register_teacher(registry):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin 'typo_plugin' implements a hook that does not exist"):
        load_plugins(["typo_plugin"])


def test_autoload_switch_loads_only_named_plugins(monkeypatch, plugins):
    monkeypatch.setenv("HASTE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert load_plugins().describe() == []
    loaded = load_plugins(["haste_students.sit"])
    assert [r["name"] for r in loaded.describe()] == ["haste_students.sit"]
    assert loaded.describe()[0]["source"].startswith("local module ")
    sits = [entry.name for entry in plugins.registry("students").entries() if entry.plugin == "students.sit"]
    assert [entry.name for entry in loaded.registry("students").entries()] == sits
    assert len(loaded.registry("teachers")) == 0


def test_installed_plugin_named_in_a_recipe_loads_once(plugins):
    loaded = load_plugins(["haste_students.sit"])  # also an entry point: registered once, under the recipe's name
    names = [r["name"] for r in loaded.describe()]
    assert "haste_students.sit" in names and "students.sit" not in names
    assert len(loaded.registry("students")) == len(plugins.registry("students"))  # no name registered twice


def test_installed_plugin_listed_by_its_file_loads_once(tmp_path, monkeypatch):
    make_distribution(tmp_path, "haste-lab", "0.3", "haste_lab_stop", POLICY_MODULE.format(name="lab_stop"), "lab")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_plugins([str(tmp_path / "haste_lab_stop.py")])  # the recipe names the installed module's file
    assert loaded.registry("terminations").get("lab_stop").plugin == "haste_lab_stop"
    names = [record["name"] for record in loaded.describe()]
    assert "haste_lab_stop" in names and "lab" not in names  # no second copy through the entry point
    assert "lab_stop" in load_plugins().registry("terminations")  # installed alone: through its entry point


def test_hook_with_a_wrong_argument_is_a_plugin_error(tmp_path, monkeypatch):
    (tmp_path / "bad_args.py").write_text(
        "from haste_core import hookimpl\n\n@hookimpl\ndef haste_step_end(run, stepp):\n    pass\n"
    )
    (tmp_path / "wrapping.py").write_text(
        "from haste_core import hookimpl\n\n@hookimpl(wrapper=True)\n"
        "def haste_register_teachers(registry):\n    return (yield)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'bad_args' has a hook implementation haste cannot call: .*stepp"):
        load_plugins(["bad_args"])
    with pytest.raises(PluginError, match="haste_register_teachers cannot be a hook wrapper"):
        load_plugins(["wrapping"])


def test_local_plugin_file_relative_to_recipe(tmp_path):
    (tmp_path / "lab_policy.py").write_text(POLICY_MODULE.format(name="lab_stop"))
    loaded = load_plugins(["lab_policy.py"], base_dir=tmp_path)
    assert "lab_stop" in loaded.registry("terminations")
    assert loaded.registry("terminations").get("lab_stop").plugin == "lab_policy"
    with pytest.raises(PluginError, match=r"local plugin file .*missing\.py does not exist"):
        load_plugins(["missing.py"], base_dir=tmp_path)


def test_registry_rejects_bad_registrations(plugins):
    from dataclasses import dataclass

    from haste_core.interfaces import Termination
    from haste_core.registry import Registry

    class NoConfig(Termination):
        def update(self, step, metrics):
            return None

    class Mutable(Termination):
        @dataclass(kw_only=True)
        class Config:
            step: int = 1

        def update(self, step, metrics):
            return None

    registry = Registry("termination", Termination)
    with pytest.raises(PluginError, match="names are lower-case snake_case"):
        registry.add("Fixed-Step", Mutable)
    with pytest.raises(PluginError, match="needs a nested `@dataclass"):
        registry.add("no_config", NoConfig)
    with pytest.raises(PluginError, match="Config must be frozen"):
        registry.add("mutable", Mutable)
    with pytest.raises(PluginError, match=re.escape("is not a subclass of haste_core.interfaces.Termination")):
        registry.add("wrong_family", dict)


def test_trace_switch_prints_hook_calls(tmp_path):
    result = run_module(
        "haste_core.run",
        str(TINY_RECIPE),
        f"run.output_dir={tmp_path}",
        "run.max_steps=1",
        env={"HASTE_TRACE_PLUGINS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "[haste trace] haste_register_students() -> plugin students.sit" in result.stderr
    assert "[haste trace] haste_train_start(run=RunContext(" in result.stderr
    assert "[haste trace] haste_step_end(run=RunContext(" in result.stderr and "step=1, metrics={" in result.stderr
    assert "-> plugins ['monitor.tensorboard']" in result.stderr
