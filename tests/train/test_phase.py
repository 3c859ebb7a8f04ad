"""Termination policies and the phase plan: when each fires, staggered stops, state across restarts."""

from __future__ import annotations

import yaml
from haste_termination.fixed_step import FixedStep
from haste_termination.never import Never

from haste_core.config.recipe import validate
from haste_core.train.phase import PhasePlan
from tests.conftest import TINY_RECIPE


def test_fixed_step_fires_at_its_step_and_not_before():
    policy = FixedStep(FixedStep.Config(step=5))
    decisions = [policy.update(step, {}) for step in range(1, 9)]
    assert [d is not None for d in decisions] == [False] * 4 + [True] * 4
    assert decisions[4].reason == "fixed_step: 5 aligned steps done"


def test_never_never_fires():
    policy = Never(Never.Config())
    assert all(policy.update(step, {}) is None for step in range(1, 10_000, 7))


def plan_with(plugins, mutate) -> PhasePlan:
    raw = yaml.safe_load(TINY_RECIPE.read_text())
    mutate(raw)
    return PhasePlan(validate(raw, plugins))


def test_run_policy_stops_every_alignment_once(plugins):
    plan = plan_with(plugins, lambda raw: None)
    assert plan.active == ["repa", "attention"]
    assert plan.update(3, {}) == []
    stops = plan.update(4, {})
    assert [(s.alignment, s.step) for s in stops] == [("repa", 4), ("attention", 4)]
    assert plan.active == [] and plan.update(5, {}) == []


def test_staggered_stops_attention_first(plugins):
    def stagger(raw):
        raw["alignment"][1]["termination"] = {"name": "fixed_step", "step": 2}
        raw["termination"] = {"name": "fixed_step", "step": 6}

    plan = plan_with(plugins, stagger)
    assert [s.alignment for s in plan.update(2, {})] == ["attention"]
    assert plan.active == ["repa"]
    assert plan.update(5, {}) == []
    assert [s.alignment for s in plan.update(6, {})] == ["repa"]


def test_plan_state_survives_a_restart(plugins):
    def stagger(raw):
        raw["alignment"][1]["termination"] = {"name": "fixed_step", "step": 2}

    plan = plan_with(plugins, stagger)
    plan.update(2, {})
    restored = plan_with(plugins, stagger)
    restored.load_state_dict(yaml.safe_load(yaml.safe_dump(plan.state_dict())))
    assert restored.active == ["repa"] and restored.stopped == {"attention": 2}
    assert restored.update(3, {}) == []  # a stopped alignment is never re-enabled nor re-announced
