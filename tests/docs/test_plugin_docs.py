"""Every code example of docs/plugin_hooks.md and docs/writing_plugins.md runs as written: each block is executed,
each hook it defines is called with real arguments, and each component it registers passes its contract check."""

from __future__ import annotations

import inspect
import re
import sys
import types

import pytest
import torch

from haste_core import RunContext
from haste_core.interfaces import FAMILIES
from haste_core.plugins import FAMILY_LABELS
from haste_core.registry import Registry
from haste_core.testing import CHECKS, check_termination
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "haste-example-plugin"
DOCS = {name: (REPO / "docs" / name).read_text() for name in ("plugin_hooks.md", "writing_plugins.md")}
BLOCKS = [
    (name, index, block)
    for name, text in DOCS.items()
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))
]


@pytest.fixture
def run(tiny, tmp_path):
    recipe = tiny()
    recipe.run_dir.mkdir(parents=True)
    return RunContext(recipe=recipe, run_dir=recipe.run_dir, rank=0, world_size=1, device=torch.device("cpu"),
                      plugins=[])  # fmt: skip


def hook_arguments(run, tmp_path) -> dict:
    checkpoint = tmp_path / "step_00000004.pt"
    checkpoint.write_bytes(b"weights")
    return {
        "run": run, "step": 4, "metrics": {"loss/total": 0.5, "align/repa": -0.2},
        "histograms": {"align/repa/cosine": torch.linspace(-1, 1, 16)}, "alignment": "repa",
        "reason": "fixed_step: 4 aligned steps done", "path": checkpoint,
        "grid": torch.zeros(3, 8, 8, dtype=torch.uint8), "kind": "teacher", "name": "dinov2_vitb14",
        "images": {"attention/attention/pair_1_2": torch.zeros(3, 8, 16, dtype=torch.uint8)},
    }  # fmt: skip


@pytest.mark.parametrize(("doc", "index", "block"), BLOCKS, ids=[f"{d}[{i}]" for d, i, _ in BLOCKS])
def test_docs_example_runs(doc, index, block, run, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the docs show the example package's components
    module = types.ModuleType(f"docs_example_{index}")  # a module like any plugin's (dataclasses look it up)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, f"docs/{doc} block {index}", "exec"), module.__dict__)
    namespace = module.__dict__
    arguments = hook_arguments(run, tmp_path)
    for name, function in list(namespace.items()):
        if name.startswith("test_") and callable(function):
            function()  # a test shown in the docs passes
        if not name.startswith("haste_") or not callable(function):
            continue
        if name.startswith("haste_register_"):
            family = name.removeprefix("haste_register_")
            registry = Registry(FAMILY_LABELS[family], FAMILIES[family])
            with registry.registering(f"docs_example_{index}"):
                function(registry)
            assert registry.entries(), f"{name} in docs/{doc} registers nothing"
            for entry in registry.entries():
                if family == "terminations":
                    check_termination(entry, labels=["repa"])
                else:
                    CHECKS[family](entry)
        else:
            wanted = inspect.signature(function).parameters
            function(**{key: value for key, value in arguments.items() if key in wanted})


def test_observer_examples_did_what_they_say(run, tmp_path, monkeypatch):
    blocks = {
        re.search(r"def (haste_\w+)\(", block).group(1): block
        for doc, _, block in BLOCKS
        if doc == "plugin_hooks.md" and "def haste_" in block
    }
    for hook in ("haste_step_end", "haste_checkpoint_saved"):
        namespace: dict = {}
        exec(blocks[hook], namespace)
        wanted = inspect.signature(namespace[hook]).parameters
        namespace[hook](**{k: v for k, v in hook_arguments(run, tmp_path).items() if k in wanted})
    assert (run.run_dir / "metrics.jsonl").read_text() == '{"step": 4, "loss/total": 0.5, "align/repa": -0.2}\n'
    backup = run.run_dir.parent / f"{run.run_dir.name}_backup" / "step_00000004.pt"
    assert backup.read_bytes() == b"weights"


def _section(text: str, header: str) -> list[str]:
    """The lines of a TOML table, up to the next blank line."""
    return text.split(f"{header}\n", 1)[1].split("\n\n", 1)[0].strip().splitlines()


def test_docs_entry_points_are_the_example_packages():
    docs = DOCS["writing_plugins.md"]
    shown = docs[docs.index('```toml\n[project]\nname = "haste-example-plugin"') :].split("```")[1]
    actual = (EXAMPLE / "pyproject.toml").read_text()
    assert _section(shown, "[project.entry-points.haste]") == _section(actual, "[project.entry-points.haste]")
    assert set(_section(shown, "[project]")) <= set(_section(actual, "[project]"))  # name, version, dependencies
