"""The paper recipes validate here (the ImageNet folder may be missing), and prefetch finds what they need."""

from __future__ import annotations

import re
import time

import pytest
import torch
import yaml
from huggingface_hub import constants as hf_constants

from haste_core import run
from haste_core.cli import main as haste_cli
from haste_core.config.recipe import load_recipe
from haste_core.eval.presets import get_preset
from tests.conftest import REPO
from tests.weights.test_teacher_weights import fill_hub_cache

RECIPES = sorted(REPO.glob("recipes/*_sit_*_in256.yaml"))
DINOV2_B_HUB = ("timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors")
SD_VAE = "stabilityai/sd-vae-ft-mse"  # the latents' default preview VAE


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
        assert "haste prefetch" in header


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
    teacher = recipe.teacher_specs["teacher"]
    assert (recipe.student_spec.num_heads, teacher.num_heads, teacher.grid) == (16, 12, 16)  # "first": heads 0-11
    student_logits = torch.randn(1, 16, 4, 4)
    built = attention.entry.build(attention.config, student=recipe.student_spec, teacher=teacher)
    assert torch.equal(built.map_heads(student_logits), student_logits[:, :12])
    # the rest of the reference's training and sampling settings
    opt = recipe.optimizer
    settings = (opt.name, opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.grad_clip, opt.warmup_steps)
    assert settings == ("adamw", 1e-4, (0.9, 0.999), 1e-8, 0.0, 1.0, 0)
    assert (recipe.data.global_batch_size, recipe.ema.decay, recipe.precision.tf32) == (256, 0.9999, True)
    assert recipe.data.config.flip is False and recipe.student.config.class_dropout_prob == 0.1
    objective = recipe.objective.config
    assert (objective.path, objective.time_sampling) == ("linear", "uniform")
    grid = recipe.sampling  # in-training grids as the reference: Euler ODE, 50 steps, CFG 4.0 everywhere
    assert (grid.sampler, grid.steps, grid.cfg_scale, grid.guidance_interval) == ("euler", 50, 4.0, (0, 1))
    header = (REPO / "recipes" / "haste_sit_xl2_dinov2b_in256.yaml").read_text().split("\nrun:")[0]
    assert "--preset haste_sit_xl2_in256 --out samples/haste_sit_xl2_dinov2b_in256" in header
    best = get_preset("haste_sit_xl2_in256")  # the header's preset holds HASTE's best-FID protocol
    protocol = (best.sampler, best.steps, best.cfg_scale, best.guidance_high, best.labels)
    assert protocol == ("sde", 250, 1.65, 0.72, "uniform")


def test_prefetch_check_reports_missing_and_cached_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    haste = str(REPO / "recipes" / "haste_sit_xl2_dinov2b_in256.yaml")
    assert haste_cli(["prefetch", haste, "--check"]) == 1
    out = capsys.readouterr().out
    assert f"teacher (dinov2_vitb14): MISSING {DINOV2_B_HUB[0]}/{DINOV2_B_HUB[1]}" in out
    assert f"data (latents): MISSING {SD_VAE}/config.json" in out  # the sample grids' VAE (data not prepared yet)
    assert f"data (latents): MISSING {SD_VAE}/diffusion_pytorch_model.safetensors" in out
    assert "3 missing; run without --check on a machine with internet" in out
    started = time.perf_counter()
    assert haste_cli(["prefetch", haste]) == 2  # HF_HUB_OFFLINE=1 (conftest): no download, a clear error at once
    assert time.perf_counter() - started < 5.0
    assert "HF_HUB_OFFLINE is set. Expected hub id 'timm/vit_base_patch14_dinov2.lvd142m'" in capsys.readouterr().err
    assert haste_cli(["prefetch", haste, "teacher.weights=none"]) == 2  # now the VAE is the first thing missing
    err = capsys.readouterr().err
    assert f"data latents: the weights are not in the Hugging Face cache ({tmp_path / 'hub'})" in err
    assert "(data.vae: /path/to/a/folder that AutoencoderKL.save_pretrained wrote)" in err
    assert "haste_resolve_weights" not in err  # no plugin hook answers for a data set's VAE
    fill_hub_cache(tmp_path / "hub", *DINOV2_B_HUB, {"x": torch.zeros(1)})
    assert haste_cli(["prefetch", haste, "--check", "data.preview=channels"]) == 0
    assert re.search(r"teacher \(dinov2_vitb14\): cached .* at .*model\.safetensors", capsys.readouterr().out)
    vanilla = str(REPO / "recipes" / "vanilla_sit_xl2_in256.yaml")
    assert haste_cli(["prefetch", vanilla, "--check", "data.vae=" + str(tmp_path)]) == 0  # a local VAE folder
    assert "nothing to fetch" in capsys.readouterr().out
    assert haste_cli(["prefetch", haste, "--check", "teacher.weights=none", "data.preview=channels"]) == 0
