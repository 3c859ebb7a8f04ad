"""In-training FID (recipe section ``eval``): logged as ``eval/fid`` to TensorBoard at the asked-for steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from haste_data.digits import load_split
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from haste_core import distributed, run_folder
from haste_core.errors import RecipeError
from haste_core.evaluate import write_npz
from haste_core.trainer import Trainer

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
    monkeypatch.setattr("haste_core.train_eval.load_fid_inception", lambda path, device: PixelFeatures())
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
