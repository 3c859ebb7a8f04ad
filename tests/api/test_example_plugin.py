"""The example plugin package (examples/haste-example-plugin) installs with pip, loads through its entry points,
passes its own tests (haste's contract checks), trains with its recipe, and its checkpoint samples from any folder.

It is installed with ``pip install --no-deps --no-build-isolation --target`` into a throw-away folder that only
the subprocesses of this test see (``PYTHONPATH``): nothing of it lands in the test environment.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, run_module

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


@pytest.mark.slow
def test_example_plugin_installs_passes_its_contracts_trains_and_samples(installed, tmp_path):
    site, source = installed
    env = {"PYTHONPATH": str(site)}

    listing = run_module("haste_core.cli", "plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "example.token_relation  [haste-example-plugin 0.1.0]" in listing.stdout
    assert "  alignments: token_relation" in listing.stdout and "  terminations: loss_target" in listing.stdout

    own_tests = run_module("pytest", "-q", "-p", "no:cacheprovider", str(source / "tests"), env=env, cwd=tmp_path)
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr
    assert "3 passed" in own_tests.stdout

    runs = tmp_path / "runs"
    overrides = [
        f"run.output_dir={runs}", "run.max_steps=6", "run.log_every=1", "run.checkpoint_every=6",
        "data.global_batch_size=8", "teacher.weights=none",
        "termination={name: loss_target, target: 10.0, every: 2, patience: 2}",
    ]  # fmt: skip
    trained = run_module("haste_core.run", str(source / "recipe.yaml"), *overrides, env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    run_dir = runs / "example_plugin"
    with (run_dir / "metrics.csv").open() as handle:  # the CSV monitor, loaded through its entry point
        rows = list(csv.DictReader(handle))
    aligned = [int(row["step"]) for row in rows if row["tag"] == "align/token_relation"]
    assert aligned == [1, 2, 3, 4]  # loss_target read at steps 2 and 4, below 10 both times: fired after step 4
    assert [float(row["value"]) for row in rows if row["tag"] == "termination/fired"] == [4.0]
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["alignment"][0]["name"] == "token_relation"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    out = elsewhere / "samples"
    sampled = run_module(
        "haste_core.cli", "sample", str(checkpoint), "--out", "samples", "--num-images", "2", "--steps", "2",
        "--sampler", "euler", "--device", "cpu", env=env, cwd=elsewhere,
    )  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr
    assert len(list(out.glob("*.png"))) == 2
