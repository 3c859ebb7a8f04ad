"""``haste prepare imagenet``: a small folder of generated images end to end, with a tiny VAE built
here; the ADM centre crop; resuming; errors that name the bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from haste_core.cli import main as haste
from haste_core.data.prepare import adm_center_crop
from haste_core.data.prepared import read_manifest, sha256

RESOLUTION = 32
SIZES = [(40, 30), (64, 64), (100, 48), (33, 70), (32, 32)]  # width × height of the generated images


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of random images of assorted sizes and formats (class ids follow the folder names)."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for label, name in enumerate(["n01", "n02"]):
        (src / name).mkdir(parents=True)
        for index, (width, height) in enumerate(SIZES):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            suffix = ".png" if index % 2 else ".JPEG"
            Image.fromarray(pixels).save(src / name / f"img{label}{index}{suffix}")
    return src


def _prepare(src, dst, vae, *extra):
    return haste(["prepare", "imagenet", str(src), str(dst), "--resolution", str(RESOLUTION), "--vae", str(vae),
                 "--shard-size", "4", "--batch", "3", "--workers", "0", "--device", "cpu", *extra])  # fmt: skip


def test_adm_center_crop_of_a_known_image():
    pixels = np.zeros((40, 100, 3), dtype=np.uint8)
    pixels[:, 30:70] = 255  # a white band in the middle 40 columns
    crop = adm_center_crop(Image.fromarray(pixels), 20)  # 100×40 halves once (40 ≥ 2·20) to 50×20, then crops
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8
    assert crop.min() == 255  # the centre 20×20 (after halving to 50×20) lies inside the white band
    tall = adm_center_crop(Image.fromarray(np.zeros((90, 30, 3), dtype=np.uint8)), 16)
    assert tall.shape == (16, 16, 3)


def test_adm_center_crop_halves_with_a_box_filter_while_the_short_side_allows():
    # 64×32 (W×H) made of constant 4×4 blocks, resolution 8: box-halved twice (32 ≥ 16, 16 ≥ 16) to 16×8, where
    # each pixel is exactly one block's value; then no resize (8 = resolution) and the centre columns 4..11.
    # Stopping one halving early (> instead of ≥) or another filter would mix neighbouring blocks.
    blocks = np.random.default_rng(3).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    pixels = blocks.repeat(4, axis=0).repeat(4, axis=1)
    crop = adm_center_crop(Image.fromarray(pixels), 8)
    assert np.array_equal(crop, blocks[:, 4:12])


def test_prepare_imagenet_end_to_end(image_folder, tiny_vae, tmp_path):
    from diffusers import AutoencoderKL
    from haste_data.latents import Latents

    dst = tmp_path / "prepared"
    assert _prepare(image_folder, dst, tiny_vae, "--flip") == 0
    manifest = read_manifest(dst)
    assert manifest["num_items"] == 10 and manifest["num_classes"] == 2 and manifest["classes"] == ["n01", "n02"]
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["latent_shape"] == [4, RESOLUTION // 8, RESOLUTION // 8] and manifest["flip"] is True
    for index, shard in enumerate(manifest["shards"]):
        for field, digest in shard["files"].items():
            assert sha256(dst / field / f"{index:05d}.npy") == digest

    # item 6 is the second image of class n02 (64×64): its crop and its VAE posterior, recomputed here
    data = Latents(Latents.Config(path=str(dst), resolution=RESOLUTION, flip=True, preview="channels"))
    assert len(data) == 20 and data.spec.num_classes == 2
    item = data[6]
    with Image.open(image_folder / "n02" / "img11.png") as picture:
        expected = adm_center_crop(picture, RESOLUTION)
    assert torch.equal(item["image"], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    assert int(item["cond"]) == 1
    vae = AutoencoderKL.from_pretrained(tiny_vae).eval()
    with torch.no_grad():
        posterior = vae.encode(item["image"][None].float() / 127.5 - 1).latent_dist
        flipped = vae.encode(item["image"].flip(-1)[None].float() / 127.5 - 1).latent_dist
    torch.testing.assert_close(item["x"], posterior.mean[0] * 0.18215, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(item["x_std"], posterior.std[0] * 0.18215, atol=1e-5, rtol=1e-4)
    mirrored = data[16]  # index + N: the flipped image with the flipped image's own latents
    assert torch.equal(mirrored["image"], item["image"].flip(-1))
    torch.testing.assert_close(mirrored["x"], flipped.mean[0] * 0.18215, atol=1e-5, rtol=1e-4)


def test_prepare_resumes_and_refuses_other_settings(image_folder, tiny_vae, tmp_path):
    dst = tmp_path / "prepared"
    assert _prepare(image_folder, dst, tiny_vae) == 0
    first = json.loads((dst / "manifest.json").read_text())
    kept = (dst / "images" / "00000.npy").stat().st_mtime_ns
    (dst / "shards" / "00001.json").unlink()  # as if the run had stopped while writing shard 1
    (dst / "latents" / "00001.npy").unlink()
    assert _prepare(image_folder, dst, tiny_vae) == 0
    assert json.loads((dst / "manifest.json").read_text()) == first  # same content, same checksums
    assert (dst / "images" / "00000.npy").stat().st_mtime_ns == kept  # finished shards are not redone
    assert _prepare(image_folder, dst, tiny_vae, "--flip") == 2  # other settings: refused, nothing overwritten
    assert json.loads((dst / "manifest.json").read_text()) == first


def test_corrupt_image_is_named(image_folder, tiny_vae, tmp_path, capsys):
    (image_folder / "n01" / "broken.png").write_bytes(b"\x89PNG not really")
    assert _prepare(image_folder, tmp_path / "prepared", tiny_vae) == 2
    assert "broken.png" in capsys.readouterr().err


def test_missing_vae_fails_fast_offline(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert _prepare(image_folder, tmp_path / "prepared", "someone/not-cached-vae") == 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err


def test_prepare_coco_with_a_tiny_text_tower(tiny_vae, tmp_path):
    import open_clip
    from haste_data.coco import Coco
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from haste_core import distributed
    from haste_core.data.prepare import PrepareSettings, prepare
    from haste_core.data.text_encoder import OpenCLIPText

    rng = np.random.default_rng(1)
    src = tmp_path / "coco"
    (src / "train2014").mkdir(parents=True)
    (src / "annotations").mkdir()
    images, notes = [], []
    for image_id in (7, 3, 5):  # image 5 has a single caption: left out with --captions 2
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(src / "train2014" / name)
        images.append({"id": image_id, "file_name": name})
        for k in range(1 if image_id == 5 else 3):
            notes.append({"id": 100 * image_id + (2 - k), "image_id": image_id, "caption": f"photo {image_id} {k} "})
    (src / "annotations" / "captions_train2014.json").write_text(json.dumps({"images": images, "annotations": notes}))
    torch.manual_seed(0)
    text_cfg = CLIPTextCfg(context_length=77, vocab_size=49408, width=16, heads=2, layers=1)
    model = CLIP(
        embed_dim=12,
        vision_cfg=CLIPVisionCfg(layers=1, width=16, head_width=8, patch_size=8, image_size=16),
        text_cfg=text_cfg,
    )
    encoder = OpenCLIPText(model, open_clip.get_tokenizer("ViT-L-14"))
    dst = tmp_path / "prepared"
    args = PrepareSettings(
        kind="coco", src=src, dst=dst, resolution=RESOLUTION, vae=str(tiny_vae), captions=2, workers=0
    )
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    manifest = prepare(args, env, encoder=encoder)
    assert manifest["num_items"] == 2 and (manifest["text_len"], manifest["text_dim"], manifest["pooled_dim"]) == (
        77,
        16,
        12,
    )
    data = Coco(Coco.Config(path=str(dst), resolution=RESOLUTION, preview="channels"))
    assert len(data) == 4 and data.spec.num_classes == 0
    # item 1 + 2 is image 7 (sorted ids: 3, 7) with its second caption by annotation id: ids 700, 701 -> "photo 7 1"
    tokens, mask, pooled = encoder.encode(["photo 7 1"])
    cond = data[3]["cond"]
    torch.testing.assert_close(cond["text"], tokens[0].half().float())
    assert torch.equal(cond["text_mask"], mask[0]) and int(mask[0].sum()) == 5  # start, 3 words, end
    torch.testing.assert_close(cond["pooled"], pooled[0].half().float())
    null_tokens, _, _ = encoder.encode([""])
    null = data.null_caption()
    torch.testing.assert_close(null["text"], null_tokens[0].half().float())
    assert int(null["text_mask"].sum()) == 2  # start and end tokens


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_prepare_run_again_redoes_a_damaged_shard_that_training_names(image_folder, tiny_vae, tmp_path, damage):
    from haste_data.latents import Latents

    from haste_core.errors import HasteError

    dst = tmp_path / "prepared"
    assert _prepare(image_folder, dst, tiny_vae) == 0
    first = json.loads((dst / "manifest.json").read_text())
    shard = dst / "latents" / "00001.npy"
    shard.write_bytes(shard.read_bytes()[:200] if damage == "truncated" else b"")
    with pytest.raises(HasteError) as caught:
        Latents(Latents.Config(path=str(dst), resolution=RESOLUTION, preview="channels"))
    command = first["command"]
    assert f"{shard} is empty, truncated or corrupt" in str(caught.value)
    assert f"run `{command}` again: it checks every shard and redoes the damaged ones" in str(caught.value)
    assert command.startswith(f"haste prepare imagenet {image_folder.resolve()} {dst.resolve()} --resolution 32")
    assert _prepare(image_folder, dst, tiny_vae) == 0  # the command the message gives: repairs the shard
    assert json.loads((dst / "manifest.json").read_text()) == first
    assert sha256(shard) == first["shards"][1]["files"]["latents"]
