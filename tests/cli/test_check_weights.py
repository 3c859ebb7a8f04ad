"""``haste check`` names every weights file a recipe needs that is not on this machine, and how to get each,
without downloading anything."""

from __future__ import annotations

import pytest

from tests.conftest import run_module


@pytest.fixture
def empty_hub(tmp_path):
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}


def test_check_names_the_missing_teacher_and_vae_weights_and_how_to_get_them(tmp_path, empty_hub):
    recipe = "haste_sit_b2_dinov2b_in256"
    result = run_module("haste_core.cli", "check", recipe, f"run.output_dir={tmp_path}", env=empty_hub, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("# note: weights: ")]
    teacher = [note for note in notes if note.startswith("# note: weights: teacher (dinov2_vitb14): ")]
    vae = [note for note in notes if note.startswith("# note: weights: data (latents): stabilityai/sd-vae-ft-mse/")]
    assert len(teacher) == 1 and len(vae) == 2 and len(notes) == 3  # the teacher; the VAE's config and weights
    assert "timm/vit_base_patch14_dinov2.lvd142m/model.safetensors is not in the Hugging Face cache" in teacher[0]
    assert "`haste prefetch haste_sit_b2_dinov2b_in256` on a machine with internet" in teacher[0]
    assert "`huggingface-cli download timm/vit_base_patch14_dinov2.lvd142m model.safetensors`" in teacher[0]
    assert "(teacher.weights: /path/to/model.safetensors)" in teacher[0]
    assert all("data.vae: /path/to/a/folder" in note for note in vae)
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.safetensors"))  # nothing fetched


def test_check_of_a_recipe_that_loads_nothing_has_no_weights_note(tmp_path, empty_hub):
    result = run_module("haste_core.cli", "check", "quickstart", f"run.output_dir={tmp_path}", env=empty_hub)
    assert result.returncode == 0, result.stderr
    assert "# note: weights" not in result.stdout


def test_check_names_the_missing_inception_weights_of_in_training_fid(tmp_path, empty_hub):
    import numpy as np

    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    env = {**empty_hub, "HASTE_CACHE": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch")}
    result = run_module(
        "haste_core.cli", "check", "quickstart", "eval.every=100", f"eval.reference={tmp_path / 'ref.npz'}",
        f"run.output_dir={tmp_path}", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (note,) = [line for line in result.stdout.splitlines() if line.startswith("# note: eval: ")]
    assert "the FID Inception weights are not in" in note and "pt_inception-2015-12-05-6726825d.pth" in note
    assert "download that file and give its path as eval.inception" in note
    assert not (tmp_path / "cache" / "inception").exists()  # nothing downloaded
