"""The example plugin's own tests: haste's contract checks on each component, and its policy's decisions."""

import torch
from haste_example.loss_target import LossTarget
from haste_example.token_relation import TokenRelation

from haste_core.testing import check_alignment, check_termination


def test_token_relation_contract():
    check_alignment(TokenRelation)


def test_loss_target_contract():
    check_termination(LossTarget, labels=["token_relation"])


def test_loss_target_fires_after_patience_readings_below_target():
    policy = LossTarget(LossTarget.Config(target=0.5, every=10, patience=2))
    policy.bind(["token_relation"], context=None)
    values = {step: 0.6 if step <= 10 else 0.4 for step in range(1, 41)}  # above the target at the first reading
    fired = next(
        step for step, value in values.items() if policy.update(step, {"align/token_relation": torch.tensor(value)})
    )
    assert fired == 30  # readings at 20 and 30 below 0.5
