"""docs/plugin_hooks.md documents every hook with its exact signature and its docstring, word for word."""

from __future__ import annotations

import inspect
import re

import pytest

from haste_core import hookspecs
from tests.conftest import REPO

DOCS = (REPO / "docs" / "plugin_hooks.md").read_text()
HOOKS = [fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("haste_")]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_every_hook_is_a_spec_with_a_docstring():
    assert {"haste_register_students", "haste_step_end", "haste_resolve_weights"} <= {hook.__name__ for hook in HOOKS}
    for hook in HOOKS:
        assert hasattr(hook, "haste_spec"), f"{hook.__name__} is not marked @hookspec"
        assert inspect.getdoc(hook), f"{hook.__name__} has no docstring"


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.__name__)
def test_hook_is_documented_with_signature_and_docstring(hook):
    signature = f"{hook.__name__}({', '.join(inspect.signature(hook).parameters)})"
    heading = re.search(rf"^### {re.escape(signature)}$", DOCS, flags=re.MULTILINE)
    assert heading, f"docs/plugin_hooks.md has no heading '### {signature}'"
    section = DOCS[heading.end() :].split("\n### ")[0].split("\n## ")[0]
    assert _squash(inspect.getdoc(hook)) in _squash(section), f"the docs of {hook.__name__} differ from its docstring"
    assert "```python" in section and "@hookimpl" in section, f"the docs of {hook.__name__} have no example"


def test_docs_name_no_hook_that_does_not_exist():
    documented = set(re.findall(r"^### (haste_\w+)\(", DOCS, flags=re.MULTILINE))
    assert documented == {hook.__name__ for hook in HOOKS}
