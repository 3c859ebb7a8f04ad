"""The example plugin package (examples/haste-example-plugin) installs with pip, loads through its entry points,
passes its own tests (haste's contract checks), trains with its recipe, and its checkpoint samples from any folder.

It is installed with ``pip install --no-deps --no-build-isolation --target`` into a throw-away folder that only
the subprocesses of this test see (``PYTHONPATH``): nothing of it lands in the test environment.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "haste-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder holding the installed package, copy of the example's source tree)."""
    root = tmp_path_factory.mktemp("example_plugin")
    source = root / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--no-index", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert list(site.glob("haste_example_plugin-0.1.0.dist-info/entry_points.txt"))
    shutil.rmtree(source / "haste_example")  # from here on, haste_example can only come from the install
    return site, source


# One interpreter for the whole author's path (each fresh one pays torch's import): the example's own tests,
# `haste plugins`, `haste run` of its recipe, and `haste sample` of the checkpoint from another folder.
DRIVER = """
import json, os, sys
import pytest
from haste_core.cli import main

steps = json.loads(sys.argv[1])
assert pytest.main(["-q", "-p", "no:cacheprovider", steps["tests"]]) == 0, "the example's own tests failed"
for argv in steps["commands"]:
    os.chdir(argv.pop(0))
    print("== haste", *argv, flush=True)
    assert main(argv) == 0, f"haste {argv[0]} failed"
"""


@pytest.mark.slow
def test_example_plugin_installs_passes_its_contracts_trains_and_samples(installed, tmp_path):
    site, source = installed
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = runs / "example_plugin"
    overrides = [
        f"run.output_dir={runs}", "run.max_steps=6", "run.log_every=1", "run.checkpoint_every=6",
        "data.global_batch_size=8", "teacher.weights=none",
        "termination={name: loss_target, target: 10.0, every: 2, patience: 2}",
    ]  # fmt: skip
    sample = [str(run_dir / "checkpoints" / "latest.pt"), "--out", "samples", "--num-images", "2", "--steps", "2"]
    steps = {
        "tests": str(source / "tests"),
        "commands": [
            [str(tmp_path), "plugins"],
            [str(tmp_path), "run", str(source / "recipe.yaml"), *overrides],
            [str(elsewhere), "sample", *sample, "--sampler", "euler", "--device", "cpu"],
        ],
    }
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(steps)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 passed" in result.stdout  # the example's tests: haste_core.testing's checks and its own
    assert "example.token_relation  [haste-example-plugin 0.1.0]" in result.stdout
    assert "  alignments: token_relation" in result.stdout and "  terminations: loss_target" in result.stdout

    with (run_dir / "metrics.csv").open() as handle:  # the CSV monitor, loaded through its entry point
        rows = list(csv.DictReader(handle))
    aligned = [int(row["step"]) for row in rows if row["tag"] == "align/token_relation"]
    assert aligned == [1, 2, 3, 4]  # loss_target read at steps 2 and 4, below 10 both times: fired after step 4
    assert [float(row["value"]) for row in rows if row["tag"] == "termination/fired"] == [4.0]
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["alignment"][0]["name"] == "token_relation"
    assert len(list((elsewhere / "samples").glob("*.png"))) == 2  # sampled from another folder
