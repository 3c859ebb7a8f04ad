"""Shared fixtures: an isolated haste cache, the loaded plugins, and a tiny recipe that trains in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing weight must fail at once, never retry online

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "tests" / "fixtures" / "tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def haste_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own cache, so the digits teacher is trained (once) by the tests themselves."""
    path = tmp_path_factory.mktemp("haste_cache")
    os.environ["HASTE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def plugins():
    from haste_core.plugins import load_plugins

    return load_plugins()


@pytest.fixture
def tiny(tmp_path: Path, plugins):
    """Load tests/fixtures/tiny.yaml with overrides; its run folder lives in this test's tmp_path."""
    from haste_core.config.recipe import load_recipe

    def load(*overrides: str):
        return load_recipe(TINY_RECIPE, [f"run.output_dir={tmp_path}", *overrides])[0]

    return load


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a small random diffusers AutoencoderKL (4 latent channels, 8× downsampling)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def run_module(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` in a fresh interpreter (the real entry points, the real exit codes)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )
