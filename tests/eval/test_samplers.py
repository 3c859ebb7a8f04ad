"""Euler, Heun and Euler–Maruyama samplers against a Gaussian whose velocity field is known exactly, and the
guidance interval."""

from __future__ import annotations

import pytest
import torch
from haste_objectives.flow import Flow

from haste_core.config.sections import SamplingConfig
from haste_core.errors import HasteError, RecipeError
from haste_core.eval.samplers import sample, sde_sample
from haste_core.interfaces import Objective, StudentOutput

MEAN, STD = 1.5, 0.6
NULL = 2  # the null class of the fake student; class 1 moves the data mean by +1
COUNT = 20_000


class ExactStudent(torch.nn.Module):
    """Predicts the exact velocity E[v | x_t] of data x0 ~ N(m, STD²) under the objective's interpolant.

    x_t = a·x0 + b·ε, v = ȧ·x0 + ḃ·ε. Jointly Gaussian, so E[v | x] = ȧm + (ȧa·STD² + ḃb)/(a²STD² + b²)·(x − am),
    with m = MEAN for class 0, MEAN + 1 for class 1 and MEAN − 1 for the null class. Records the times at which
    it sees the null class (i.e. where guidance was applied).
    """

    def __init__(self, objective: Flow) -> None:
        super().__init__()
        self.objective = objective
        self.guided_times: list[float] = []
        self.times: list[float] = []

    def forward(self, x_t, t, cond, capture=None):
        m = MEAN + torch.where(cond == 1, 1.0, torch.where(cond == NULL, -1.0, 0.0)).view(-1, 1)
        a, b = (c.view(-1, 1) for c in self.objective.alpha_sigma(t))
        da, db = (c.view(-1, 1) for c in self.objective.alpha_sigma_rates(t))
        velocity = da * m + (da * a * STD**2 + db * b) / (a**2 * STD**2 + b**2) * (x_t - a * m)
        self.times.append(float(t[0]))
        if bool((cond == NULL).any()):
            self.guided_times.append(float(t[0]))
        return StudentOutput(pred=velocity.to(x_t.dtype))

    def null_cond(self, cond):
        return torch.full_like(cond, NULL)


def _draw(sampler: str, path: str, steps: int, cond: int = 0, **config):
    torch.manual_seed(0)
    objective = Flow(Flow.Config(path=path))
    student = ExactStudent(objective)
    noise = torch.randn(COUNT, 1)
    labels = torch.full((COUNT,), cond, dtype=torch.long)
    x = sample(student, objective, noise, labels, SamplingConfig(sampler=sampler, steps=steps, **config),
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    return x, student


@pytest.mark.parametrize("path", ["linear", "cosine"])
@pytest.mark.parametrize(("sampler", "steps"), [("euler", 200), ("heun", 50), ("sde", 250)])
def test_sampler_reproduces_the_gaussian(sampler, steps, path):
    x, student = _draw(sampler, path, steps)
    assert x.dtype == torch.float32 and x.shape == (COUNT, 1)
    # standard errors over 20,000 samples: 0.004 for the mean, 0.003 for the std
    assert abs(x.mean().item() - MEAN) < 0.02, x.mean().item()
    assert abs(x.std().item() - STD) < 0.02, x.std().item()
    expected_calls = {"euler": steps, "heun": 2 * steps - 1, "sde": steps}[sampler]
    assert len(student.times) == expected_calls


def test_sde_grid_is_the_reference_one():
    _, student = _draw("sde", "linear", 5)
    assert student.times == pytest.approx([1.0, 0.76, 0.52, 0.28, 0.04])  # linspace(1, 0.04, 5), then to 0


class StillStudent(torch.nn.Module):
    """Predicts v ≡ 0: on the linear path the SDE's score is then −x/t and its drift v − ½·w·s = w·x/(2t)."""

    def forward(self, x_t, t, cond, capture=None):
        return StudentOutput(pred=torch.zeros_like(x_t))


def _still(noise: torch.Tensor, steps: int) -> torch.Tensor:
    labels = torch.zeros(len(noise), dtype=torch.long)
    return sde_sample(StillStudent(), Flow(Flow.Config()), noise, labels, steps=steps,
                      generator=torch.Generator().manual_seed(2))  # fmt: skip


def test_sde_coefficients_in_closed_form():
    # w(t) = 2t makes the drift x itself. One step (1 -> 0) is the last one: drift only, x + (0 − 1)·x = 0 exactly
    # (w = t would leave x/2, noise on the last step would leave noise).
    assert torch.equal(_still(torch.randn(1000, 1), steps=1), torch.zeros(1000, 1))
    # Two steps (1 -> 0.04 -> 0) from x = 0: x₁ = √w(1)·√0.96·ξ, then x₂ = (1 − 0.04)·x₁ without noise, so
    # Var x₂ = 0.96² · 2 · 0.96 = 1.769 (w = t: 0.922; noise on the last step: +0.003; standard error 0.018)
    variance = _still(torch.zeros(COUNT, 1), steps=2).var().item()
    assert abs(variance - 0.96**2 * 2 * 0.96) < 0.06, variance


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    euler, _ = _draw("euler", "linear", 8)
    heun, _ = _draw("heun", "linear", 8)
    assert abs(heun.std().item() - STD) < abs(euler.std().item() - STD) / 3


def test_sde_without_noise_steps_depends_on_the_generator_only():
    objective = Flow(Flow.Config())
    noise = torch.randn(64, 1, generator=torch.Generator().manual_seed(3))
    labels = torch.zeros(64, dtype=torch.long)

    def run(seed):
        return sde_sample(ExactStudent(objective), objective, noise, labels, steps=10,
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


@pytest.mark.parametrize("sampler", ["euler", "sde"])
def test_full_guidance_moves_the_mean_as_predicted(sampler):
    # v_u + 2(v_c − v_u) is the exact velocity of N(MEAN + 3, STD²): guidance extrapolates from the null class
    x, _ = _draw(sampler, "linear", 200, cond=1, cfg_scale=2.0)
    assert abs(x.mean().item() - (MEAN + 3)) < 0.03
    assert abs(x.std().item() - STD) < 0.03


@pytest.mark.parametrize("sampler", ["euler", "sde"])
def test_guidance_only_inside_the_interval(sampler):
    x, student = _draw(sampler, "linear", 20, cond=1, cfg_scale=2.0, guidance_low=0.22, guidance_high=0.58)
    inside = [t for t in student.times if 0.22 <= t <= 0.58]  # grid step 0.05: 0.25 ... 0.55
    assert inside and sorted(student.guided_times) == sorted(inside)
    plain, _ = _draw(sampler, "linear", 20, cond=1)
    full, _ = _draw(sampler, "linear", 20, cond=1, cfg_scale=2.0)
    assert plain.mean().item() + 0.1 < x.mean().item() < full.mean().item() - 0.1


def test_heun_guides_a_step_by_its_start_time():
    # as REPA's and HASTE's samplers: the step 0.75 -> 0.70 is unguided although its corrector evaluation at 0.70
    # lies inside [0, 0.72]; the steps starting inside are guided in both evaluations (HASTE's protocol, 20 steps)
    x, student = _draw("heun", "linear", 20, cond=1, cfg_scale=1.65, guidance_low=0.0, guidance_high=0.72)
    starts = [1 - i / 20 for i in range(20)]
    expected = [t for t in starts if t <= 0.72] + [t - 0.05 for t in starts[:-1] if t <= 0.72]
    assert len(student.times) == 39
    assert sorted(student.guided_times) == pytest.approx(sorted(expected), abs=1e-6)
    # t = 0.70 is evaluated twice (corrector of the step from 0.75, predictor of the next) and guided once
    assert sum(abs(t - 0.70) < 1e-6 for t in student.times) == 2
    assert sum(abs(t - 0.70) < 1e-6 for t in student.guided_times) == 1
    plain, _ = _draw("heun", "linear", 20, cond=1)
    assert x.mean().item() > plain.mean().item() + 0.1


def test_interval_holding_no_step_equals_no_guidance():
    x, student = _draw("euler", "linear", 10, cond=1, cfg_scale=3.0, guidance_low=0.31, guidance_high=0.39)
    plain, _ = _draw("euler", "linear", 10, cond=1)
    assert student.guided_times == [] and torch.equal(x, plain)


def test_rates_by_autograd_match_the_closed_form():
    class AutogradRates(Flow):  # the Objective default: dα/dt, dσ/dt by autograd through alpha_sigma
        alpha_sigma_rates = Objective.alpha_sigma_rates

    config = Flow.Config(path="cosine")
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    for got, want in zip(AutogradRates(config).alpha_sigma_rates(t), Flow(config).alpha_sigma_rates(t), strict=True):
        torch.testing.assert_close(got, want)


def test_bad_interval_is_a_recipe_error():
    with pytest.raises(RecipeError, match="guidance_low <= guidance_high"):
        SamplingConfig(guidance_low=0.8, guidance_high=0.2)


def test_a_sampler_the_objective_does_not_offer_is_refused():
    objective = Flow(Flow.Config())
    config = SamplingConfig(sampler="ddpm", steps=4)
    with pytest.raises(HasteError, match="unknown sampler 'ddpm' for objective Flow: use euler, heun, sde"):
        sample(ExactStudent(objective), objective, torch.randn(4, 1), torch.zeros(4, dtype=torch.long), config)
