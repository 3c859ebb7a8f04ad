"""The paper recipes validate here (the ImageNet folder may be missing), and prefetch finds what they need."""

from __future__ import annotations

import re
import time

import pytest
import torch
import yaml

from haste_core import prefetch, run
from haste_core.recipe import load_recipe

from .conftest import REPO
from .test_teacher_weights import fill_hub_cache

RECIPES = sorted(REPO.glob("recipes/*_sit_*_in256.yaml"))
DINOV2_B_HUB = ("timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors")


def test_every_method_and_size_has_a_recipe():
    names = {path.stem for path in RECIPES}
    for size in ("xl2", "l2", "b2"):
        wanted = {f"haste_sit_{size}_dinov2b_in256", f"repa_sit_{size}_dinov2b_in256", f"vanilla_sit_{size}_in256"}
        assert wanted <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_paper_recipe_passes_check_and_names_its_command(path, capsys):
    assert run.main([str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "# ok: data latents" in out
    header = path.read_text().split("\nrun:")[0]
    assert f"torchrun --standalone --nproc_per_node=8 -m haste_core.run recipes/{path.name}\n" in header
    recipe, _ = load_recipe(path)
    assert recipe.data.global_batch_size == 256 and recipe.optimizer.lr == 1e-4 and recipe.ema.decay == 0.9999
    assert recipe.precision.dtype == "bf16"
    if path.name.startswith("vanilla"):
        assert not recipe.teachers and not recipe.alignments
    else:
        assert recipe.teachers["teacher"].name == "dinov2_vitb14"
        assert "python -m haste_core.prefetch" in header


def test_the_haste_paper_recipe_is_the_paper_setting():
    raw = yaml.safe_load((REPO / "recipes" / "haste_sit_xl2_dinov2b_in256.yaml").read_text())
    recipe, _ = load_recipe(REPO / "recipes" / "haste_sit_xl2_dinov2b_in256.yaml")
    repa, attention = recipe.alignments
    assert (repa.name, repa.weight, repa.config.student_block, repa.config.teacher_block) == ("repa", 0.5, 7, -1)
    assert repa.config.projector_dim == 2048
    assert attention.weight == 0.5 and attention.config.heads == "first"
    assert attention.config.pairs == ((4, 8), (5, 9), (6, 10), (7, 11))
    assert recipe.termination.name == "fixed_step" and recipe.termination.config.step == 250000
    assert raw["student"] == {"name": "sit_xl_2"} and recipe.student_spec.grid == recipe.teacher_specs["teacher"].grid


def test_prefetch_check_reports_missing_and_cached_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    haste = str(REPO / "recipes" / "haste_sit_xl2_dinov2b_in256.yaml")
    assert prefetch.main([haste, "--check"]) == 1
    out = capsys.readouterr().out
    assert f"teacher (dinov2_vitb14): MISSING {DINOV2_B_HUB[0]}/{DINOV2_B_HUB[1]}" in out
    assert "1 missing; run without --check on a machine with internet" in out
    started = time.perf_counter()
    assert prefetch.main([haste]) == 2  # HF_HUB_OFFLINE=1 (conftest): no download, a clear error at once
    assert time.perf_counter() - started < 5.0
    assert "HF_HUB_OFFLINE is set. Expected hub id 'timm/vit_base_patch14_dinov2.lvd142m'" in capsys.readouterr().err
    fill_hub_cache(tmp_path / "hub", *DINOV2_B_HUB, {"x": torch.zeros(1)})
    assert prefetch.main([haste, "--check"]) == 0
    assert re.search(r"teacher \(dinov2_vitb14\): cached .* at .*model\.safetensors", capsys.readouterr().out)
    assert prefetch.main([str(REPO / "recipes" / "vanilla_sit_xl2_in256.yaml"), "--check"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out
    assert prefetch.main([haste, "--check", "teacher.weights=none"]) == 0
