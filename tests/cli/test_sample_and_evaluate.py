"""``haste sample``: PNGs and the ADM ``.npz`` from a checkpoint, labels stated, resumable; and
``haste evaluate`` failing fast without Inception weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from haste_core import run
from haste_core.cli import main as haste
from haste_core.eval.generate import image_labels, image_noise
from tests.conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert run.main([str(TINY_RECIPE), f"run.output_dir={out}", "run.max_steps=2", "run.checkpoint_every=2"]) == 0
    return out / "tiny" / "checkpoints" / "latest.pt"


def _sample(checkpoint, out, *extra):
    return haste(["sample", str(checkpoint), "--num-images", "12", "--out", str(out), "--sampler", "euler",
                  "--steps", "2", "--batch", "5", "--device", "cpu", *extra])  # fmt: skip


def test_sample_writes_pngs_npz_and_states_the_labels(trained, tmp_path):
    out = tmp_path / "samples"
    assert _sample(trained, out, "--cfg", "2.0", "--guidance-high", "0.7") == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(12)]
    with np.load(tmp_path / "samples.npz") as data:
        assert list(data.keys()) == ["arr_0"]
        images = data["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 3)  # grey digits stored as RGB
    assert np.array_equal(images[..., 0], images[..., 2])
    record = json.loads((out / "sampling.json").read_text())
    assert record["labels"] == "balanced" and record["weights"] == "ema" and record["guidance_interval"] == [0.0, 0.7]
    assert record["step"] == 2 and record["cfg_scale"] == 2.0


def test_sample_preset_pins_the_published_protocol_and_records_it(trained, tmp_path, capsys):
    out = tmp_path / "samples"
    command = ["sample", str(trained), "--out", str(out), "--preset", "haste_sit_xl2_in256", "--device", "cpu"]
    assert haste([*command, "--num-images", "3"]) == 0
    record = json.loads((out / "sampling.json").read_text())
    assert record["preset"] == "haste_sit_xl2_in256" and record["num"] == 3
    assert (record["sampler"], record["steps"], record["cfg_scale"]) == ("sde", 250, 1.65)
    assert record["guidance_interval"] == [0.0, 0.72] and record["labels"] == "uniform" and record["seed"] == 0
    # a pinned setting given beside the preset is refused, naming it
    assert haste([*command, "--steps", "50", "--cfg", "1.5"]) == 2
    assert "--preset haste_sit_xl2_in256 pins --cfg, --steps" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["euler", "sde"])
def test_sample_resumes_and_is_deterministic(trained, tmp_path, sampler):
    out = tmp_path / "samples"
    assert _sample(trained, out, "--sampler", sampler) == 0
    first = np.load(tmp_path / "samples.npz")["arr_0"]
    kept = (out / "000003.png").stat().st_mtime_ns
    (out / "000007.png").unlink()  # as if the run had been stopped before image 7
    assert _sample(trained, out, "--sampler", sampler) == 0
    assert (out / "000003.png").stat().st_mtime_ns == kept
    assert not list(out.glob(".*.tmp"))
    # image 7 comes back the same, although it is now drawn in a batch of its own (the SDE's noise is per image)
    assert np.array_equal(np.load(tmp_path / "samples.npz")["arr_0"], first)
    assert _sample(trained, tmp_path / "other", "--sampler", sampler, "--batch", "12") == 0
    assert np.array_equal(np.load(tmp_path / "other.npz")["arr_0"], first)  # whatever the batching


def test_label_modes_and_noise_per_image():
    assert image_labels(7, 3, "balanced", 0).tolist() == [0, 1, 2, 0, 1, 2, 0]
    uniform = image_labels(3000, 10, "uniform", 0)
    assert torch.equal(uniform, image_labels(3000, 10, "uniform", 0)) and set(uniform.tolist()) == set(range(10))
    assert not torch.equal(torch.bincount(uniform), torch.full((10,), 300))  # uniform draws are not balanced
    together = image_noise([4, 5], (1, 2, 2), seed=1)
    assert torch.equal(together[1], image_noise([5], (1, 2, 2), seed=1)[0])  # independent of the batch it is in


def test_evaluate_fails_fast_without_inception_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HASTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    images = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=images)
    assert haste(["evaluate", str(tmp_path / "a.npz"), str(tmp_path / "a.npz")]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_latent_checkpoints_are_decoded_with_the_vae_even_if_trained_with_channel_previews(tiny_vae, tmp_path):
    from haste_core.data.prepared import write_example

    folder = write_example(tmp_path / "in32", num_items=4, resolution=32)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"run: {{name: r, output_dir: {tmp_path}, max_steps: 1}}\n"
        f"data: {{name: latents, path: {folder}, resolution: 32, preview: channels, vae: {tiny_vae}, "
        "global_batch_size: 4}\nstudent: {name: sit_micro_2}\nobjective: {name: flow}\n"
        "sampling: {num_images: 2, steps: 1}\n"
    )
    assert run.main([str(recipe)]) == 0
    out = tmp_path / "samples"
    assert _sample(tmp_path / "r" / "checkpoints" / "latest.pt", out, "--num-images", "2") == 0
    images = np.load(tmp_path / "samples.npz")["arr_0"]
    assert images.shape == (2, 32, 32, 3)  # VAE-decoded pixels, not 4×4 latent channels shown as RGB
