"""The built wheel works without the source tree: its recipes ship inside it, and it trains.

The wheel is built from a copy of the tree and installed into a throw-away environment; that environment sees
the test environment's packages (torch and the other dependencies) through a ``.pth`` line added after the
install, but not its editable haste, whose finder only a site directory's own ``.pth`` files would load.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

NOT_SOURCE = (".venv", ".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "build", "dist")


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of the source tree on the path
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A venv holding only the wheel (its bin/haste), with the test environment's site-packages after it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source, cwd=root)
    (wheel,) = (root / "dist").glob("haste_diffusion-*.whl")
    env = root / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env, cwd=root)
    python = env / "bin" / "python"
    run(*pip, "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=root)
    env_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).stdout.strip()
    (Path(env_site) / "test_env_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


@pytest.mark.slow
def test_the_installed_wheel_ships_the_recipes_and_trains_from_a_copied_one(wheel_env, tmp_path):
    located = run(
        wheel_env / "bin" / "python", "-c",
        "import haste_core, haste_recipes, haste_students, importlib.metadata as m; "
        "print(haste_core.__file__); print(haste_recipes.__file__); print(haste_students.__file__); "
        "print(m.version('haste-diffusion'), m.distribution('haste-diffusion').metadata['License-Expression'])",
        cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    for path in located[:3]:
        assert Path(path).is_relative_to(wheel_env), f"{path} is not the wheel's"
    from haste_core import __version__

    assert located[3:] == [__version__, "Apache-2.0"]
    haste = wheel_env / "bin" / "haste"
    listing = run(haste, "recipes", cwd=tmp_path).stdout
    assert "quickstart" in listing and "haste_sit_xl2_dinov2b_in256" in listing
    run(haste, "recipes", "cp", "quickstart", cwd=tmp_path)
    assert filecmp.cmp(tmp_path / "quickstart.yaml", REPO / "recipes" / "quickstart.yaml", shallow=False)
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    by_name = run(haste, "run", "quickstart", "--check", f"run.output_dir={tmp_path}", cwd=elsewhere).stdout
    assert yaml.safe_load(by_name)["run"]["name"] == "quickstart"  # a shipped recipe found by its name
    run(
        haste, "run", "quickstart.yaml", "run.output_dir=runs", "run.max_steps=3", "run.log_every=1",
        "teacher.weights=none", "sampling.num_images=10", "sampling.steps=2", cwd=tmp_path,
    )  # fmt: skip
    run_dir = tmp_path / "runs" / "quickstart"
    assert (run_dir / "checkpoints" / "step_00000003.pt").is_file()
    assert "step 3/3 | loss" in (run_dir / "log.txt").read_text()
