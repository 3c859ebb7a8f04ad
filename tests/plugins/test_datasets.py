"""The ``latents``, ``image_folder`` and ``coco`` data sets: items, flips, posterior sampling, Phase II, and
errors for missing, mismatched or corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from haste_data.coco import Coco, write_example_coco
from haste_data.image_folder import ImageFolder
from haste_data.latents import Latents
from huggingface_hub import constants as hf_constants
from PIL import Image

from haste_core import run
from haste_core.data.prepared import write_example
from haste_core.errors import HasteError, RecipeError

RES = 32


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_example(tmp_path / "in32", num_items=6, resolution=RES, num_classes=3, flip=True)


def _latents(folder, **settings) -> Latents:
    return Latents(Latents.Config(path=str(folder), resolution=RES, preview="channels", **settings))


def test_latents_items_are_scaled_moments(folder):
    data = _latents(folder, flip=True)
    moments = np.load(folder / "latents" / "00000.npy")
    flipped = np.load(folder / "latents_flip" / "00000.npy")
    images = np.load(folder / "images" / "00000.npy")
    assert len(data) == 12 and data.spec.x_shape == (4, 4, 4) and data.spec.num_classes == 3
    item = data[4]
    torch.testing.assert_close(item["x"], torch.from_numpy(moments[4, :4]) * 0.18215)
    torch.testing.assert_close(item["x_std"], torch.from_numpy(moments[4, 4:]) * 0.18215)
    assert torch.equal(item["image"], torch.from_numpy(images[4])) and int(item["cond"]) == 4 % 3
    mirrored = data[6 + 4]
    assert torch.equal(mirrored["image"], torch.from_numpy(images[4]).flip(-1)) and int(mirrored["cond"]) == 1
    torch.testing.assert_close(mirrored["x"], torch.from_numpy(flipped[4, :4]) * 0.18215)
    with pytest.raises(IndexError):
        data[12]


def test_posterior_is_sampled_on_the_device_each_step(folder):
    data = _latents(folder, scale=0.5, shift=0.1)
    item = data[2]
    batch = {key: value.unsqueeze(0).expand(20_000, *value.shape).clone() for key, value in item.items()}
    torch.manual_seed(0)
    drawn = data.finish_batch(dict(batch))["x"]
    assert "x_std" not in data.finish_batch(dict(batch))
    torch.testing.assert_close(drawn.mean(0), item["x"], atol=0.005, rtol=0)  # std 0.1·0.5 = 0.05; 20,000 draws
    torch.testing.assert_close(drawn.std(0), item["x_std"], atol=0.003, rtol=0)
    mean_only = _latents(folder, sample_posterior=False)
    assert "x_std" not in mean_only[2]
    assert torch.equal(mean_only.finish_batch({"x": item["x"]})["x"], item["x"])


def test_phase_two_items_have_no_image(folder):
    data = _latents(folder)
    data.set_images_needed(False)
    assert set(data[0]) == {"x", "x_std", "cond"}


def test_missing_folder_describes_and_says_how_to_make_it(tmp_path):
    config = Latents.Config(path=str(tmp_path / "imagenet256"), resolution=256)
    spec = Latents.describe(config)
    assert spec.x_shape == (4, 32, 32) and spec.image_shape == (3, 256, 256) and spec.num_classes == 1000
    assert "does not exist yet" in spec.unavailable
    assert (
        f"--no-python haste prepare imagenet /path/to/ILSVRC2012/train {tmp_path / 'imagenet256'} --resolution 256"
        in (spec.unavailable)
    )
    with pytest.raises(HasteError, match="does not exist yet"):
        Latents(config)


def test_recipe_check_passes_and_run_stops_when_the_folder_is_missing(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"run: {{name: r, output_dir: {tmp_path}, max_steps: 2}}\n"
        f"data: {{name: latents, path: {tmp_path / 'in256'}, global_batch_size: 256, num_workers: 8}}\n"
        "student: {name: sit_micro_2}\nobjective: {name: flow}\n"
    )
    assert run.main([str(recipe), "--check"]) == 0
    assert "# note: data: the prepared folder" in capsys.readouterr().out
    assert run.main([str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "haste prepare imagenet" in err and not (tmp_path / "r").exists()


def test_a_short_run_on_latents(folder, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"run: {{name: r, output_dir: {tmp_path}, max_steps: 2, resume: never}}\n"
        f"data: {{name: latents, path: {folder}, resolution: {RES}, flip: true, preview: channels, "
        "global_batch_size: 4}\nstudent: {name: sit_micro_2}\nobjective: {name: flow}\n"
        "sampling: {num_images: 3, steps: 2, sampler: heun}\n"
    )
    assert run.main([str(recipe)]) == 0
    assert (tmp_path / "r" / "samples" / "step_00000002.png").is_file()


def test_posterior_samples_make_a_resumed_run_identical(folder, tmp_path):
    from haste_core.weights import checkpoint

    def train(out, steps):
        recipe = tmp_path / f"{out}_{steps}.yaml"
        recipe.write_text(
            f"run: {{name: r, output_dir: {tmp_path / out}, max_steps: {steps}, checkpoint_every: 2}}\n"
            f"data: {{name: latents, path: {folder}, resolution: {RES}, preview: channels, global_batch_size: 4, "
            "scale: 5.0}\nstudent: {name: sit_micro_2}\nobjective: {name: flow}\nsampling: {num_images: 2, steps: 1}\n"
        )  # scale 5: posterior noise of std 0.5, large against the mean
        assert run.main([str(recipe)]) == 0
        return checkpoint.load(tmp_path / out / "r" / "checkpoints" / "latest.pt")

    straight = train("a", 4)
    train("b", 2)
    resumed = train("b", 4)  # continues from step 2: the posterior draws of steps 3 and 4 must be the same
    assert resumed["step"] == straight["step"] == 4
    for key, value in straight["student"].items():
        assert torch.equal(resumed["student"][key], value), key


def test_mismatched_settings_are_recipe_errors(folder, tmp_path):
    with pytest.raises(RecipeError, match=r"data\.resolution=32"):
        Latents.describe(Latents.Config(path=str(folder), resolution=256))
    plain = write_example(tmp_path / "plain", resolution=RES)
    with pytest.raises(RecipeError, match="--flip"):
        Latents.describe(Latents.Config(path=str(plain), resolution=RES, flip=True))
    with pytest.raises(RecipeError, match="'imagenet' data"):
        Coco.describe(Coco.Config(path=str(plain), resolution=RES))


def test_corrupt_truncated_or_partial_folders_name_the_file(folder):
    (folder / "latents" / "00000.npy").write_bytes(b"garbage")
    with pytest.raises(HasteError, match=r"latents/00000.npy is empty, truncated or corrupt"):
        _latents(folder)
    np.save(folder / "latents" / "00000.npy", np.zeros((5, 8, 4, 4), np.float32))
    with pytest.raises(HasteError, match=r"latents/00000.npy holds an array of shape \[5, 8, 4, 4\]"):
        _latents(folder)
    (folder / "images" / "00000.npy").unlink()
    with pytest.raises(HasteError, match=r"images/00000.npy is missing"):
        _latents(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(RecipeError, match="only partly prepared"):
        Latents.describe(Latents.Config(path=str(folder), resolution=RES))


def test_image_folder_items_flip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "src" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "src" / name / "a.png")
    config = ImageFolder.Config(path=str(tmp_path / "src"), resolution=16, flip=True)
    data = ImageFolder(config)
    assert data.spec.num_items == 4 and data.spec.num_classes == 2 and data.spec.x_shape == (3, 16, 16)
    item, mirrored = data[1], data[3]
    assert int(item["cond"]) == 1 and item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
    torch.testing.assert_close(item["x"], item["image"].float() / 127.5 - 1)
    assert torch.equal(mirrored["image"], item["image"].flip(-1))
    assert torch.equal(data.to_images(item["x"][None])[0], item["image"])
    (tmp_path / "src" / "dog" / "b.png").write_bytes(b"broken")
    broken = ImageFolder(ImageFolder.Config(path=str(tmp_path / "src"), resolution=16))
    with pytest.raises(HasteError, match=r"dog/b\.png"):
        broken[2]
    with pytest.raises(RecipeError, match=r"does not exist"):
        ImageFolder.describe(ImageFolder.Config(path=str(tmp_path / "nowhere")))


def test_coco_items_captions_and_null_caption(tmp_path):
    root = write_example_coco(tmp_path / "coco", captions=2, text=(6, 8, 4))
    data = Coco(Coco.Config(path=str(root), resolution=16, preview="channels"))
    n = 8  # images in the example folder
    assert len(data) == n * 2 and data.spec.text_len == 6 and data.spec.text_dim == 8 and data.spec.pooled_dim == 4
    text = np.load(root / "text" / "00000.npy")
    mask = np.load(root / "text_mask" / "00000.npy")
    item = data[n + 3]  # image 3, caption 1
    assert set(item["cond"]) == {"text", "text_mask", "pooled"}
    torch.testing.assert_close(item["cond"]["text"], torch.from_numpy(text[3, 1].astype(np.float32)))
    assert item["cond"]["text_mask"].dtype == torch.bool and torch.equal(
        item["cond"]["text_mask"], torch.from_numpy(mask[3, 1])
    )
    assert torch.equal(item["image"], data[3]["image"])
    conds = data.sample_conds(3)
    assert conds["text"].shape == (3, 6, 8) and conds["pooled"].shape == (3, 4)
    torch.testing.assert_close(conds["text"][2], torch.from_numpy(text[2, 0].astype(np.float32)))
    picked, first_ten = data.sample_conds_at([9, 2]), data.sample_conds(10)  # generation asks batch by batch
    for key in ("text", "text_mask", "pooled"):
        assert torch.equal(picked[key], first_ten[key][[9, 2]])
    torch.testing.assert_close(picked["text"][0], torch.from_numpy(text[1, 0].astype(np.float32)))  # 9 mod 8 = 1
    null = data.null_caption()
    assert null["text"].shape == (6, 8) and null["text_mask"].tolist() == [True, True, False, False, False, False]


def test_coco_missing_folder_spec_has_text_sizes(tmp_path):
    spec = Coco.describe(Coco.Config(path=str(tmp_path / "coco256")))
    assert (spec.text_len, spec.text_dim, spec.pooled_dim) == (77, 768, 768) and spec.num_classes == 0
    assert "haste prepare coco" in spec.unavailable


def test_vae_previews_fail_at_construction_when_the_vae_is_unreachable(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    with pytest.raises(HasteError, match=r"data\.preview=channels"):
        Latents(Latents.Config(path=str(folder), resolution=RES, vae="someone/uncached-vae"))
    (tmp_path / "my_vae").mkdir()
    Latents(Latents.Config(path=str(folder), resolution=RES, vae=str(tmp_path / "my_vae")))  # a local folder: fine
