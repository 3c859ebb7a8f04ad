"""The runnable example in docs/students.md runs and does what it says."""

from __future__ import annotations

import re

from tests.conftest import REPO

DOC = REPO / "docs" / "students.md"


def test_checkpoint_example_in_the_docs_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert "blocks.0.adaLN_modulation.1.bias" in printed
