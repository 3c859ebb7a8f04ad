"""In-training FID (recipe section ``eval``): logged as ``eval/fid`` to TensorBoard at the asked-for steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from haste_data.digits import load_split
from huggingface_hub import constants as hf_constants
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from haste_core import distributed, run
from haste_core.errors import RecipeError
from haste_core.eval.scores import write_npz
from haste_core.train import run_folder
from haste_core.train.trainer import Trainer
from tests.conftest import TINY_RECIPE

CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class PixelFeatures(torch.nn.Module):
    """Stands in for the Inception network (no weights offline): the mean over channels as 64-d features."""

    def forward(self, images):
        return {"pool": images.float().mean(dim=1).flatten(1)}


@pytest.fixture
def reference(tmp_path):
    images, _ = load_split("heldout")
    path = tmp_path / "digits_heldout.npz"
    write_npz(path, images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy())
    return path


def test_fid_is_logged_every_k_steps(tiny, plugins, reference, monkeypatch):
    monkeypatch.setattr("haste_core.eval.in_training.load_fid_inception", lambda path, device: PixelFeatures())
    recipe = tiny("run.max_steps=4", "eval.every=2", "eval.num_samples=30", f"eval.reference={reference}",
                  "eval.batch=16")  # fmt: skip
    run_folder.write_recipe(recipe)
    trainer = Trainer(recipe, plugins, CPU)
    trainer.fit()
    events = EventAccumulator(str(recipe.run_dir / "tensorboard"))
    events.Reload()
    logged = events.Scalars("eval/fid")
    assert [e.step for e in logged] == [2, 4]
    assert all(np.isfinite(e.value) and e.value > 0 for e in logged)
    # the same noise every time: evaluating the final EMA student again gives the value logged at step 4
    again = trainer.evaluator.evaluate(trainer.ema.model, trainer.objective, trainer.dataset)["eval/fid"]
    assert again == pytest.approx(logged[-1].value, rel=1e-5)
    assert "eval" in recipe.to_dict() and recipe.to_dict()["eval"]["every"] == 2


def test_eval_needs_an_existing_reference(tiny, tmp_path):
    with pytest.raises(RecipeError, match=r"eval\.reference"):
        tiny("eval.every=10", f"eval.reference={tmp_path / 'missing.npz'}")
    assert "eval" not in tiny().to_dict()  # off by default, and then not written into the resolved recipe


class LinearFeatures(torch.nn.Module):
    """A stand-in Inception network with a layer that autocast would run in bfloat16."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3 * 8 * 8, 16).requires_grad_(False)

    def forward(self, images):
        return {"pool": self.layer(images.float().flatten(1) / 255)}


def test_inception_features_ignore_the_trainers_autocast(reference, monkeypatch):
    from haste_core.config.sections import EvalConfig, SamplingConfig
    from haste_core.eval.in_training import FIDEvaluator

    monkeypatch.setattr("haste_core.eval.in_training.load_fid_inception", lambda path, device: LinearFeatures())
    evaluator = FIDEvaluator(EvalConfig(every=1, reference=str(reference), batch=16), SamplingConfig(), CPU)
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    plain = evaluator._pool(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what Trainer._evaluate runs the evaluator in
        assert np.array_equal(evaluator._pool(images), plain)


def test_in_training_fid_without_inception_weights_fails_before_training(
    tiny, plugins, reference, tmp_path, monkeypatch, capsys
):
    from haste_core.errors import HasteError

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HASTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    recipe = tiny("eval.every=2", f"eval.reference={reference}")
    with pytest.raises(HasteError, match=r"pt_inception-2015-12-05-6726825d\.pth"):
        Trainer(recipe, plugins, CPU)
    assert not (recipe.run_dir / "checkpoints").exists()
    assert run.main([str(TINY_RECIPE), f"run.output_dir={tmp_path / 'runs'}", "eval.every=2",
                     f"eval.reference={reference}", "--check"]) == 0  # fmt: skip
    assert "# note: eval: the FID Inception weights are not in" in capsys.readouterr().out
    with pytest.raises(RecipeError, match=r"eval\.inception"):
        tiny("eval.every=2", f"eval.reference={reference}", f"eval.inception={tmp_path / 'missing.pth'}")


def test_in_training_fid_uses_the_stored_reference_statistics(tmp_path, monkeypatch):
    from haste_core.config.sections import EvalConfig, SamplingConfig
    from haste_core.eval.fid import frechet_distance, gaussian_stats
    from haste_core.eval.in_training import FIDEvaluator

    monkeypatch.setattr("haste_core.eval.in_training.load_fid_inception", lambda path, device: PixelFeatures())
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    mu, sigma = np.full(64, 100.0), np.eye(64) * 50
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=mu, sigma=sigma)  # as the ADM reference batches
    evaluator = FIDEvaluator(EvalConfig(every=1, reference=str(tmp_path / "adm.npz")), SamplingConfig(), CPU)
    assert np.array_equal(evaluator.reference[0], mu) and np.array_equal(evaluator.reference[1], sigma)
    write_npz(tmp_path / "images.npz", images)  # without them: the statistics of the images
    evaluator = FIDEvaluator(EvalConfig(every=1, reference=str(tmp_path / "images.npz")), SamplingConfig(), CPU)
    features = images.astype(np.float64).mean(axis=3).reshape(20, -1)
    own = gaussian_stats(features)
    np.testing.assert_allclose(evaluator.reference[0], own[0])
    assert frechet_distance(*evaluator.reference, *own) < 1e-6
