"""Activation checkpointing per student block: the same gradients with and without it, captured blocks included,
and the same training run through the phase change."""

from __future__ import annotations

import pytest
import torch
from haste_students.sit import SiT, SiTArch

from haste_core import Capture, distributed
from haste_core.errors import RecipeError
from haste_core.interfaces import DataSpec
from haste_core.train import activation_checkpointing
from haste_core.train.trainer import Trainer

CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
DATA = DataSpec(x_shape=(4, 16, 16), image_shape=(3, 16, 16), num_classes=10, num_items=8)


def micro_sit() -> SiT:
    torch.manual_seed(0)
    arch = SiTArch(depth=4, hidden_size=64, num_heads=4, patch_size=2)
    config = SiT.Config(class_dropout_prob=0.5)  # randomness inside the forward: recomputation must replay it
    student = SiT(config, arch=arch, data=DATA, spec=SiT.describe(config, data=DATA, arch=arch))
    for param in student.parameters():  # leave adaLN-Zero's zeros, so every block's gradient is non-trivial
        param.data.add_(0.02 * torch.randn_like(param))
    return student


def gradients(every: int) -> tuple[list[int], dict[str, torch.Tensor]]:
    student = micro_sit()
    chosen = activation_checkpointing.apply(student, every, "sit_micro_2")
    torch.manual_seed(1)
    x, t, y = torch.randn(4, 4, 16, 16), torch.rand(4), torch.arange(4)
    out = student(x, t, y, capture=Capture(hidden=frozenset({1}), attn=frozenset({1, 2})))
    loss = out.pred.pow(2).mean() + out.hidden[1].pow(2).mean()
    loss = loss + sum(logits.softmax(-1).pow(2).mean() for logits in out.attn_logits.values())
    loss.backward()
    return chosen, {name: p.grad.clone() for name, p in student.named_parameters()}


@pytest.mark.parametrize("every", [1, 2])
def test_same_gradients_with_and_without_checkpointing(every):
    _, plain = gradients(0)
    chosen, recomputed = gradients(every)
    assert chosen == ([0, 1, 2, 3] if every == 1 else [0, 2])
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointed_blocks():
    assert activation_checkpointing.checkpointed_blocks(28, 0) == []
    assert activation_checkpointing.checkpointed_blocks(6, 4) == [0, 4]


def test_negative_every_is_a_recipe_error(tiny):
    with pytest.raises(RecipeError, match=r"activation_checkpointing.every.*must be 0 \(none\), 1 \(all blocks\)"):
        tiny("activation_checkpointing.every=-1")


def test_checkpointed_run_trains_like_a_plain_one_through_the_phase_change(tiny, plugins):
    students = {}
    for every in (0, 1):
        recipe = tiny(f"run.name=ac{every}", "run.max_steps=5", f"activation_checkpointing.every={every}")
        trainer = Trainer(recipe, plugins, CPU)
        trainer.fit()
        assert trainer.plan.stopped == {"repa": 4, "attention": 4}
        students[every] = trainer.student.state_dict()
    for name, value in students[0].items():
        torch.testing.assert_close(students[1][name], value, rtol=1e-5, atol=1e-6, msg=name)
