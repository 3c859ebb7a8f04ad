"""Every command the README, the docs and the recipe headers show runs as written: each parses with the real
``haste`` verb parser (and torchrun's own parser for its flags), and those that can run here, on the CPU without
data, do (``haste check``, ``run --check``, ``recipes``, ``plugins``, ``prefetch --check``)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from haste_core.cli import VERBS, verb_parser
from haste_core.cli import main as haste
from tests.conftest import REPO

SOURCES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "recipes").glob("*.yaml"))]
# a command line: optional environment settings, then torchrun or a haste verb ("[torchrun ...]" is caught too: it
# does not run as written)
COMMAND = re.compile(r"^(?:\w+=\S*\s+)*\[?(?:torchrun\s|haste\s+(?:" + "|".join(VERBS) + r")\b)")
RUNNABLE_HERE = {"check", "recipes", "plugins"}  # and run/prefetch with --check
EXAMPLE = "examples/"


def command_lines(path: Path) -> list[str]:
    """Commands in code blocks, indented blocks and recipe header comments, continuation lines joined."""
    lines, in_fence = [], False
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if path.suffix == ".yaml":
            if not raw.startswith("#   "):
                continue
            text = raw[4:]
        elif in_fence or raw.startswith("    "):
            text = raw.strip()
        else:
            continue
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + text.strip()
        else:
            lines.append(text.strip())
    commands = []
    for line in lines:
        line = re.sub(r"^\$\s+", "", line)
        line = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment
        if COMMAND.match(line):
            commands.append(line)
    return commands


CASES = [(path, line) for path in SOURCES for line in command_lines(path)]


def haste_argv(line: str) -> list[str]:
    """The ``haste`` argv a command line runs; torchrun's own flags are checked with torchrun's parser."""
    words = shlex.split(line)
    words = words[next(i for i, w in enumerate(words) if "=" not in w or w.startswith("-")) :]  # env settings
    if words[0] == "torchrun":
        if "--no-python" in words:
            at = words.index("haste")
            torchrun_args, argv = words[1:at], words[at + 1 :]
        else:
            at = words.index("-m")
            assert words[at + 1] == "haste_core.run", f"torchrun runs {words[at + 1]}, not haste: {line}"
            torchrun_args, argv = words[1:at], ["run", *words[at + 2 :]]
        get_args_parser().parse_args([*torchrun_args, "haste"])  # torchrun's flags exist
        return argv
    assert words[0] == "haste", line
    return words[1:]


def test_the_sources_hold_commands():
    verbs = {haste_argv(line)[0] for _, line in CASES}
    assert {"run", "check", "sample", "evaluate", "prepare", "prefetch", "export"} <= verbs


@pytest.mark.parametrize(("path", "line"), CASES, ids=[f"{p.name}:{line[:60]}" for p, line in CASES])
def test_command_parses_with_the_real_parser(path, line):
    argv = haste_argv(line)
    assert argv[0] in VERBS, f"{path.name}: unknown verb in {line!r}"
    verb_parser(argv[0]).parse_intermixed_args(argv[1:])  # exits (fails the test) on an unknown flag


RUNNABLE = sorted(
    {
        tuple(argv)
        for _, line in CASES
        if (argv := haste_argv(line))[0] in RUNNABLE_HERE or (argv[0] in {"run", "prefetch"} and "--check" in argv)
        if not any(re.search(r"[A-Z]{4,}|\[|\.\.\.", word) for word in argv)  # no placeholders (RECIPE, [...])
        # the example plugin's commands need it pip-installed: tests/api/test_example_plugin.py runs them so
        if not any(word.startswith(EXAMPLE) for word in argv)
    }
)


@pytest.mark.parametrize("argv", RUNNABLE, ids=[" ".join(a) for a in RUNNABLE])
def test_command_runs_here(argv, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # the docs' paths are relative to a checkout
    status = haste([*argv, f"run.output_dir={tmp_path}"] if argv[0] in {"run", "check"} else list(argv))
    assert status in ({0, 1} if argv[0] == "prefetch" else {0}), f"haste {' '.join(argv)} exited {status}"
