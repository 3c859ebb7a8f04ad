"""The adaptive termination policies on deterministic signals: each fires when its condition is met, not before."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from haste_termination.fade import Fade
from haste_termination.fixed_epoch import FixedEpoch
from haste_termination.gradient_conflict import GradientConflict
from haste_termination.plateau import Plateau

from haste_core import ops
from haste_core.config.recipe import validate
from haste_core.errors import HasteError, RecipeError
from haste_core.interfaces import PolicyContext
from haste_core.train import probe
from haste_core.train.phase import PhasePlan
from tests.conftest import TINY_RECIPE


def first_firing(policy, metrics_at, steps: int = 200) -> int | None:
    for step in range(1, steps + 1):
        if policy.update(step, metrics_at(step)) is not None:
            return step
    return None


def bound(policy, labels=("attention",), *, max_steps: int = 200, steps_per_epoch: int = 10):
    policy.bind(list(labels), PolicyContext(max_steps=max_steps, steps_per_epoch=steps_per_epoch))
    return policy


def test_fixed_epoch_fires_when_the_epoch_completes():
    policy = bound(FixedEpoch(FixedEpoch.Config(epochs=2)), steps_per_epoch=7)
    assert first_firing(policy, lambda s: {}) == 14
    half = bound(FixedEpoch(FixedEpoch.Config(epochs=0.5)), steps_per_epoch=7)
    assert first_firing(half, lambda s: {}) == 4  # 4/7 ≥ 0.5 > 3/7
    tenths = bound(FixedEpoch(FixedEpoch.Config(epochs=0.7)), steps_per_epoch=10)  # 0.7·10 = 7.000000000000001
    assert first_firing(tenths, lambda s: {}) == 7
    late = bound(FixedEpoch(FixedEpoch.Config(epochs=500)), steps_per_epoch=10_007)  # not one step early or late
    assert late.update(500 * 10_007 - 1, {}) is None
    assert late.update(500 * 10_007, {}) is not None


def falling_then_flat(step: int) -> float:
    return 1.0 - 0.01 * min(step, 40)  # improves by 0.1 per 10 steps until step 40, then flat at 0.6


def test_plateau_fires_at_the_first_check_without_improvement():
    policy = Plateau(Plateau.Config(window=10, tolerance=0.01, decay=0.0))
    bound(policy, ["attention"])
    fired = first_firing(policy, lambda s: {"align/attention": torch.tensor(falling_then_flat(s))})
    assert fired == 50  # checks at 10, 20, 30, 40 see gains of 11-14 %; the check at 50 sees none


def test_plateau_waits_for_every_governed_term():
    policy = Plateau(Plateau.Config(window=10, tolerance=0.01, decay=0.0))
    bound(policy, ["repa", "attention"])

    def metrics(step: int) -> dict[str, torch.Tensor]:
        late = 1.0 - 0.01 * min(step, 70)  # repa keeps improving until step 70
        return {"align/attention": torch.tensor(falling_then_flat(step)), "align/repa": torch.tensor(late)}

    assert first_firing(policy, metrics) == 80


def test_plateau_smoothing_and_state_continue_the_same_decision():
    config = Plateau.Config(window=10, tolerance=0.01, decay=0.9)
    straight, resumed = Plateau(config), Plateau(config)
    bound(straight, ["attention"])
    bound(resumed, ["attention"])
    noise = torch.Generator().manual_seed(0)
    signal = {s: falling_then_flat(s) + 0.02 * torch.rand((), generator=noise).item() for s in range(1, 201)}
    decisions = []
    for step in range(1, 201):
        decisions.append(straight.update(step, {"align/attention": torch.tensor(signal[step])}) is not None)
        if step == 33:
            resumed.load_state_dict(yaml.safe_load(yaml.safe_dump(straight.state_dict())))
    fired = decisions.index(True) + 1
    assert 50 <= fired <= 80  # smoothing delays the decision by about one window
    replay = [resumed.update(s, {"align/attention": torch.tensor(signal[s])}) is not None for s in range(34, fired + 1)]
    assert replay == decisions[33:fired]


def test_plateau_names_a_missing_metric():
    policy = Plateau(Plateau.Config(metric="align/repa"))
    with pytest.raises(HasteError, match=re.escape("plateau: metric 'align/repa' is not among the training values")):
        policy.update(1, {"loss/denoise": torch.tensor(1.0)})
    seen = Plateau(Plateau.Config(metric="align/attention", window=1))
    assert seen.update(1, {"align/attention": torch.tensor(1.0)}) is None
    # attention stopped (its own policy) while a watching plateau on its loss goes on: it waits, it does not fail
    assert [seen.update(step, {"align/repa": torch.tensor(1.0)}) for step in (2, 3)] == [None, None]


def probe_metrics(cosine: float, norm_denoise: float = 2.0, norm_align: float = 1.0) -> dict[str, torch.Tensor]:
    dot = cosine * norm_denoise * norm_align
    return {
        ops.dot_key("denoise", "denoise"): torch.tensor(norm_denoise**2),
        ops.dot_key("denoise", "attention"): torch.tensor(dot),
        ops.dot_key("attention", "attention"): torch.tensor(norm_align**2),
    }


def test_gradient_conflict_needs_patience_consecutive_conflicts():
    policy = GradientConflict(GradientConflict.Config(every=5, threshold=0.0, patience=3))
    bound(policy, ["attention"])
    assert policy.probe_every == 5
    cosines = {5: 0.3, 10: -0.2, 15: -0.1, 20: 0.05, 25: -0.3, 30: -0.2, 35: -0.4, 40: -0.5}

    def metrics(step: int) -> dict[str, torch.Tensor]:
        return probe_metrics(cosines[step]) if step in cosines else {"loss/denoise": torch.tensor(1.0)}

    assert first_firing(policy, metrics) == 35  # 10 and 15 conflict, 20 resets the count, 25-30-35 fire
    other = GradientConflict(GradientConflict.Config(every=5, threshold=0.0, patience=1))
    bound(other, ["attention"])
    assert other.update(3, probe_metrics(-0.9)) is None and other.cosines == []  # probed for another policy
    assert other.update(5, probe_metrics(-0.9)) is not None
    assert policy.cosines[:2] == [(5, pytest.approx(0.3)), (10, pytest.approx(-0.2))]


def test_conflict_cosine_and_health_from_a_gram_matrix():
    g_denoise, g_repa, g_attention = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 1.0])
    grads = {"denoise": g_denoise, "repa": g_repa, "attention": g_attention}
    names = list(grads)
    metrics = {
        ops.dot_key(a, b): grads[a] @ grads[b] for i, a in enumerate(names) for j, b in enumerate(names) if j >= i
    }
    summed = g_repa + g_attention
    expected = (g_denoise @ summed / (g_denoise.norm() * summed.norm())).item()
    assert ops.conflict_cosine(metrics, ["repa", "attention"]) == pytest.approx(expected)
    assert ops.conflict_cosine(metrics, ["attention"]) == pytest.approx(-1 / math.sqrt(2))
    assert ops.conflict_cosine({}, ["attention"]) is None
    health = probe.health(metrics)
    norms = [1.0, 2.0, math.sqrt(2)]
    assert health["grad/share/repa"] == pytest.approx(norms[1] / sum(norms))
    assert health["grad/cos/repa"] == pytest.approx(0.0)
    assert health["grad/cos/attention"] == pytest.approx(-1 / math.sqrt(2))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [("linear", [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]), ("cosine", [1.0, 1.0, 0.8536, 0.5, 0.1464, 0.0])],
)
def test_fade_ramps_the_weight_then_fires(shape, expected):
    policy = Fade(Fade.Config(start=2, steps=4, shape=shape))
    assert [policy.weight_scale(step) for step in range(1, 7)] == pytest.approx(expected, abs=1e-4)
    assert first_firing(policy, lambda s: {}) == 5  # step 5 is the last with a positive weight


@pytest.mark.parametrize(
    ("cls", "config", "message"),
    [
        (Fade, {"start": 3, "steps": 0}, "steps: must be at least 1, got 0; for a hard stop use fixed_step"),
        (Fade, {"start": 0, "steps": 1}, "steps: start 0 and steps 1 leave no step with a positive weight"),
        (Plateau, {"decay": 1.0}, "decay: must be in [0, 1), got 1.0"),
        (GradientConflict, {"threshold": 2.0}, "threshold: a cosine threshold must be in [-1, 1], got 2.0"),
        (FixedEpoch, {"epochs": 0}, "epochs: must be positive, got 0"),
    ],
)
def test_bad_policy_settings_are_refused(cls, config, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        cls.Config(**config)


def plan_with(plugins, mutate) -> PhasePlan:
    raw = yaml.safe_load(TINY_RECIPE.read_text())
    mutate(raw)
    return PhasePlan(validate(raw, plugins))


def test_plan_scales_weights_of_the_faded_alignment_only(plugins):
    def fade_attention(raw):
        raw["alignment"][1]["termination"] = {"name": "fade", "start": 1, "steps": 2}

    plan = plan_with(plugins, fade_attention)
    assert plan.weight_scales(1) == {"repa": 1.0, "attention": 1.0}
    assert plan.weight_scales(2) == {"repa": 1.0, "attention": 0.5}
    assert [s.alignment for s in plan.update(2, {})] == ["attention"]
    assert plan.weight_scales(3) == {"repa": 1.0}


def test_watch_policies_record_once_and_never_stop_anything(plugins):
    def watch(raw):
        raw["termination"] = {
            "name": "never",
            "watch": [{"name": "fixed_step", "step": 2}, {"name": "fixed_step", "step": 3}, {"name": "fade", "start": 0,
                      "steps": 9}, {"name": "gradient_conflict", "every": 7}],
        }  # fmt: skip

    plan = plan_with(plugins, watch)
    assert list(plan.watch) == ["fixed_step_0", "fixed_step_1", "fade", "gradient_conflict"]
    assert plan.weight_scales(5) == {"repa": 1.0, "attention": 1.0}  # a watching fade changes no weight
    assert plan.probe_every() == 7
    both = plan_with(plugins, lambda raw: (watch(raw), raw["termination"].update(name="gradient_conflict", every=3)))
    assert both.probe_every() == 1  # probes at 3, 6, 7, 9, 12, 14...: each policy gets its own steps
    assert [step for step in range(1, 15) if both.probe_due(step)] == [3, 6, 7, 9, 12, 14]
    assert [plan.update(step, {}) for step in range(1, 10)] == [[]] * 9
    assert plan.active == ["repa", "attention"]
    assert plan.would_fire == {"fixed_step_0": 2, "fixed_step_1": 3, "fade": 8}
    assert plan.take_unlogged() == {"fixed_step_0": 2, "fixed_step_1": 3, "fade": 8} and plan.take_unlogged() == {}
    restored = plan_with(plugins, watch)
    restored.load_state_dict(yaml.safe_load(yaml.safe_dump(plan.state_dict())))
    assert restored.would_fire == plan.would_fire
    restored.update(10, {})
    assert restored.take_unlogged() == {}  # a policy that would have fired is not consulted again


def test_watch_round_trips_through_the_resolved_recipe(plugins):
    raw = yaml.safe_load(TINY_RECIPE.read_text())
    raw["termination"]["watch"] = [{"name": "plateau", "window": 3}]
    recipe = validate(raw, plugins)
    assert [node.name for node in recipe.watch] == ["plateau"]
    assert recipe.to_dict()["termination"]["watch"][0]["window"] == 3
    assert validate(recipe.to_dict(), plugins).to_dict() == recipe.to_dict()
    raw["termination"]["watch"] = {"name": "plateau"}
    with pytest.raises(RecipeError, match=re.escape("termination.watch: expected a list of termination nodes")):
        validate(raw, plugins)
    raw["termination"]["watch"] = [{"name": "plateau", "windw": 3}]
    with pytest.raises(RecipeError, match=re.escape("termination.watch[0]")):
        validate(raw, plugins)


class TwoBranchStep(torch.nn.Module):
    """Denoising reaches parameters a and b; alignment 'x' reaches only a, alignment 'y' only b."""

    def __init__(self) -> None:
        super().__init__()
        self.student = torch.nn.ParameterDict(
            {"a": torch.nn.Parameter(torch.tensor([1.0, 2.0])), "b": torch.nn.Parameter(torch.tensor([3.0, -1.0]))}
        )

    def forward(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a, b = self.student["a"], self.student["b"]
        denoise = (a**2).sum() + (b**2).sum()  # gradient (2a, 2b) = (2, 4 | 6, -2)
        parts = {"loss/denoise": denoise, "align/x": (a * torch.tensor([1.0, 0.0])).sum(), "align/y": -b.sum()}
        return denoise, parts


def test_probe_cosines_use_only_the_parameters_each_term_shares_with_denoising():
    module = TwoBranchStep()
    metrics = probe.measure(module, (), {"x": 1.0, "y": 2.0}, torch.device("cpu"))
    # x's gradient is (1, 0) on a: cos with denoise's (2, 4) on a alone, not with all of (2, 4, 6, -2)
    assert ops.conflict_cosine(metrics, ["x"]) == pytest.approx(2 / math.sqrt(20))
    # y's (weighted) gradient is (-2, -2) on b: cos with (6, -2) on b
    assert ops.conflict_cosine(metrics, ["y"]) == pytest.approx(-8 / (math.sqrt(8) * math.sqrt(40)))
    # both together reach a and b: the sum (1, 0, -2, -2) against the whole denoising gradient
    both = torch.tensor([1.0, 0.0, -2.0, -2.0]) @ torch.tensor([2.0, 4.0, 6.0, -2.0]) / (3.0 * math.sqrt(60))
    assert ops.conflict_cosine(metrics, ["x", "y"]) == pytest.approx(both.item())
    health = probe.health(metrics)
    assert health["grad/cos/x"] == pytest.approx(2 / math.sqrt(20))
    norms = [math.sqrt(60), 1.0, math.sqrt(8)]
    assert health["grad/share/denoise"] == pytest.approx(norms[0] / sum(norms))


def test_watch_alone_when_every_alignment_has_its_own_policy(plugins):
    raw = yaml.safe_load(TINY_RECIPE.read_text())
    raw["alignment"][0]["termination"] = {"name": "fixed_step", "step": 6}
    raw["alignment"][1]["termination"] = {"name": "fixed_step", "step": 2}
    raw["termination"] = {"watch": [{"name": "fixed_step", "step": 4}]}
    recipe = validate(raw, plugins)
    assert recipe.termination is None and [node.name for node in recipe.watch] == ["fixed_step"]
    assert recipe.to_dict()["termination"] == {"watch": [{"name": "fixed_step", "step": 4}]}
    assert validate(recipe.to_dict(), plugins).to_dict() == recipe.to_dict()
    plan = PhasePlan(recipe)
    assert list(plan.policies) == ["repa", "attention"]
    stops = {step: [s.alignment for s in plan.update(step, {})] for step in range(1, 7)}
    assert stops == {1: [], 2: ["attention"], 3: [], 4: [], 5: [], 6: ["repa"]}
    assert plan.would_fire == {"fixed_step": 4}
    del raw["alignment"][0]["termination"]  # repa now needs a run-wide policy, and watch does not act
    message = "termination: alignment[0] has no termination policy (termination.watch policies only observe)"
    with pytest.raises(RecipeError, match=re.escape(message)):
        validate(raw, plugins)
    raw["alignment"][0]["termination"] = {"name": "never"}
    raw["termination"]["name"] = "never"
    with pytest.raises(RecipeError, match=re.escape("a 'termination' section holding only 'watch: [...]' is allowed")):
        validate(raw, plugins)
