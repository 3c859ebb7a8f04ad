"""The divergence guard: a checkpoint never holds NaN or infinity, rotation keeps the last finite one, the message
names a finite checkpoint, and a non-finite input batch is reported as a data problem naming the item."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from haste_core.train.guard import DivergenceError, all_finite, state_tensors
from haste_core.weights import checkpoint
from tests.train.test_trainer import trainer_for


def finite_checkpoint(path: Path) -> bool:
    state = checkpoint.load(path)
    tensors = state_tensors([state["student"], state["ema"], state["alignments"], state["optimizer"]["state"]])
    return bool(all_finite(tensors, torch.device("cpu")))


def test_divergence_never_saves_a_non_finite_checkpoint(tiny, plugins):
    # the case: logging rarely, saving every step, keeping two checkpoints
    recipe = tiny(
        "optimizer.lr=1e3", "optimizer.grad_clip=0", "run.log_every=10", "run.checkpoint_every=1",
        "run.keep_checkpoints=2", "run.max_steps=10", "termination.step=10",
    )  # fmt: skip
    trainer = trainer_for(recipe, plugins)
    with pytest.raises(DivergenceError) as caught:
        trainer.fit()
    assert trainer.step < 10  # stopped at the first save of a non-finite state, not at the next log
    files = checkpoint.step_files(recipe.run_dir)
    assert files, "a few finite steps were saved before the divergence"
    assert all(finite_checkpoint(path) for path in [*files, checkpoint.latest_path(recipe.run_dir)])
    named = Path(re.search(r"the last checkpoint, (\S+) \(finite", str(caught.value)).group(1))
    assert named == files[-1] and finite_checkpoint(named)
    assert checkpoint.load(checkpoint.latest_path(recipe.run_dir))["step"] == trainer.step - 1
    assert "Lower optimizer.lr" in str(caught.value)


def test_all_finite_reads_every_tensor_and_accepts_local_shards():
    device = torch.device("cpu")
    good = [torch.ones(3), torch.zeros(2, 2), torch.tensor([1, 2])]  # integer tensors are skipped
    assert bool(all_finite(good, device))
    assert not bool(all_finite([*good, torch.tensor([1.0, float("inf")])], device))
    assert not bool(all_finite([torch.tensor([float("nan")], dtype=torch.bfloat16)], device))

    class Shard(torch.Tensor):  # what a DTensor offers: the local part through to_local()
        def to_local(self) -> torch.Tensor:
            return torch.tensor([float("nan")])

    assert not bool(all_finite([torch.ones(1).as_subclass(Shard)], device))


def test_a_non_finite_input_is_reported_as_data_naming_the_item(tiny, plugins):
    trainer = trainer_for(tiny("run.max_steps=3", "run.log_every=3", "run.checkpoint_every=0"), plugins)
    finish = trainer.dataset.finish_batch
    poisoned = {}

    def finish_batch(batch):
        batch = finish(batch)
        if trainer.step == 1:  # the batch of step 2: poison its item 5
            batch["x"][5, 0, 0, 0] = float("nan")
            poisoned["index"] = trainer.stream.item_index(trainer.stream.taken(), 0, 5)
        return batch

    trainer.dataset.finish_batch = finish_batch
    with pytest.raises(DivergenceError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert f"the input batch of step 2 was not finite: data set item {poisoned['index']} (position 5" in message
    assert "learning-rate" in message and "Lower optimizer.lr" not in message
    assert checkpoint.step_files(trainer.recipe.run_dir) == []


def test_item_index_is_what_the_stream_handed_out(tiny, plugins):
    trainer = trainer_for(tiny("data.global_batch_size=512"), plugins)  # two batches per epoch: crosses epochs
    for _ in range(3):
        batch = next(trainer.stream)
        indices = [trainer.stream.item_index(trainer.stream.taken(), 0, i) for i in (0, 7)]
        assert torch.equal(batch["x"][[0, 7]], torch.stack([trainer.dataset[i]["x"] for i in indices]))
