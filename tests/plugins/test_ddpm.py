"""The ddpm objective and the DDPM ancestral sampler, against closed forms (Gaussian data, exact ε predictor)."""

from __future__ import annotations

import pytest
import torch
from haste_objectives.ddpm import DDPM
from haste_objectives.ddpm_sampler import ancestral_sample as ddpm_sample
from torch import Tensor, nn

from haste_core.errors import HasteError
from haste_core.eval.samplers import euler_sample
from haste_core.interfaces import StudentOutput, TrainingPair

DATA_MEAN, DATA_STD = 0.7, 0.5  # the Gaussian "data set" of the closed-form tests


class ExactEps(nn.Module):
    """E[ε | x_t] for data N(μ, s²) per dimension: σ (x_t − α μ) / (α² s² + σ²); optionally learned-sigma
    channels holding ``var_value``. Labels are ignored (guidance then changes nothing)."""

    def __init__(self, objective: DDPM, var_value: float | None = None) -> None:
        super().__init__()
        self.objective, self.var_value = objective, var_value

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, capture=None) -> StudentOutput:
        alpha, sigma = (c.view(-1, 1, 1, 1).double() for c in self.objective.alpha_sigma(t.double()))
        eps = (sigma * (x_t.double() - alpha * DATA_MEAN) / (alpha**2 * DATA_STD**2 + sigma**2)).float()
        if self.var_value is not None:
            eps = torch.cat([eps, torch.full_like(eps, self.var_value)], dim=1)
        return StudentOutput(pred=eps)

    def null_cond(self, cond: Tensor) -> Tensor:
        return torch.zeros_like(cond)


def _noise(count: int = 20_000) -> Tensor:
    return torch.randn(count, 1, 1, 1, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("steps", "var_value"), [(1000, None), (250, None), (250, -1.0), (250, 1.0)])
def test_ancestral_sampling_recovers_gaussian_data(steps, var_value):
    torch.manual_seed(1)
    objective = DDPM(DDPM.Config())
    cond = torch.zeros(20_000, dtype=torch.long)
    x = ddpm_sample(ExactEps(objective, var_value), objective, _noise(), cond, steps=steps, cfg_scale=1.5)
    assert abs(x.mean().item() - DATA_MEAN) < 0.02
    assert abs(x.std().item() - DATA_STD) < 0.02


def test_euler_on_the_ddpm_velocity_recovers_gaussian_data():
    objective = DDPM(DDPM.Config())
    cond = torch.zeros(20_000, dtype=torch.long)
    x = euler_sample(ExactEps(objective), objective, _noise(), cond, steps=200)
    assert abs(x.mean().item() - DATA_MEAN) < 0.02
    assert abs(x.std().item() - DATA_STD) < 0.02


def test_schedule_and_training_pairs_follow_the_linear_beta_schedule():
    objective = DDPM(DDPM.Config())
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert torch.allclose(objective.discrete_schedule(), alpha_bar)
    torch.manual_seed(0)
    x0 = torch.randn(64, 2, 4, 4)
    pair = objective.training_pair(x0)
    index = (pair.t * 999).round().long()
    assert torch.allclose(pair.t * 999, index.float(), atol=1e-4) and index.min() >= 0 and index.max() <= 999
    a = alpha_bar[index].float().view(-1, 1, 1, 1)
    assert torch.allclose(pair.x_t, a.sqrt() * x0 + (1 - a).sqrt() * pair.target, atol=1e-5)


def test_velocity_is_the_time_derivative_of_the_path():
    objective = DDPM(DDPM.Config())
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 1, 2, 2, generator=generator), torch.randn(3, 1, 2, 2, generator=generator)
    t = torch.tensor([0.1003, 0.5, 0.9004], dtype=torch.float64)  # inside grid segments
    h = 1e-7

    def path(time: Tensor) -> Tensor:
        alpha, sigma = objective.alpha_sigma(time)
        return alpha.view(-1, 1, 1, 1) * x0.double() + sigma.view(-1, 1, 1, 1) * eps.double()

    numeric = (path(t + h) - path(t - h)) / (2 * h)
    v = objective.velocity(eps.double(), path(t), t)
    assert torch.allclose(v, numeric, rtol=1e-4, atol=1e-5)
    with torch.enable_grad():  # the analytic rates agree with autograd through alpha_sigma
        leaf = t.clone().requires_grad_(True)
        alpha, sigma = objective.alpha_sigma(leaf)
        by_autograd = [torch.autograd.grad(c.sum(), leaf, retain_graph=True)[0] for c in (alpha, sigma)]
    for analytic, numeric_rate in zip(objective.alpha_sigma_rates(t), by_autograd, strict=True):
        assert torch.allclose(analytic, numeric_rate, rtol=1e-6)


def test_loss_is_mse_without_sigma_and_adds_a_vlb_that_only_trains_the_variance():
    objective = DDPM(DDPM.Config())
    torch.manual_seed(0)
    x0 = torch.randn(8, 2, 4, 4).clamp(-1, 1)
    pair = objective.training_pair(x0)
    assert objective.loss(pair.target + 0.5, pair).item() == pytest.approx(0.25)
    pred = torch.cat([pair.target + 0.5, torch.zeros_like(x0)], dim=1).requires_grad_(True)
    loss = objective.loss(pred, pair)
    assert loss.item() > 0.25 and loss.dtype == torch.float32
    loss.backward()
    # the ε half only gets the MSE gradient 2·(pred − ε)/numel: the VLB sees ε through a stop-gradient
    assert torch.allclose(pred.grad[:, :2], torch.full_like(x0, 2 * 0.5 / x0.numel()))
    assert pred.grad[:, 2:].abs().sum() > 0


def test_vlb_vanishes_for_the_exact_mean_and_posterior_variance():
    objective = DDPM(DDPM.Config())
    x0 = torch.rand(4, 1, 3, 3) * 2 - 1
    eps = torch.randn(4, 1, 3, 3)
    t = torch.tensor([10, 200, 500, 999]) / 999
    a = objective.discrete_schedule()[objective.index_of(t)].float().view(-1, 1, 1, 1)
    pair = TrainingPair(x_t=a.sqrt() * x0 + (1 - a).sqrt() * eps, t=t, target=eps)
    vlb = objective.variational_bound(eps, torch.full_like(eps, -1.0), pair)  # v = −1: Σ = β̃ (the truth)
    assert torch.allclose(vlb, torch.zeros(4), atol=1e-4)
    at_zero = TrainingPair(x_t=x0, t=torch.zeros(4), target=torch.zeros_like(x0))
    nll = objective.variational_bound(torch.zeros_like(x0), torch.zeros_like(x0), at_zero)
    assert (nll > 0).all() and torch.isfinite(nll).all()


def test_wrong_prediction_shape_is_explained():
    objective = DDPM(DDPM.Config())
    pair = objective.training_pair(torch.zeros(2, 4, 4, 4))
    with pytest.raises(HasteError, match=r"ddpm needs predictions of shape \(4, 4, 4\)"):
        objective.loss(torch.zeros(2, 3, 4, 4), pair)


def test_dit_trains_with_ddpm_and_samples(tiny, plugins):
    from haste_core import distributed
    from haste_core.train.trainer import Trainer

    recipe = tiny("student.name=dit_micro_2", "objective.name=ddpm", "run.max_steps=2", "termination.step=1")
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(recipe, plugins, env)
    trainer.fit()
    assert trainer.student.learn_sigma and trainer.step == 2
    assert all(torch.isfinite(p).all() for p in trainer.ema.model.parameters())
    assert any(p.abs().sum() > 0 for p in trainer.student.final_layer.parameters())  # it left adaLN-Zero
    assert (recipe.run_dir / "samples" / "step_00000002.png").is_file()


def test_ddpm_sampler_settings_are_checked_with_the_recipe(tiny):
    """Found when the recipe is loaded, not when the first grid is drawn after hours of training."""
    from haste_core.errors import RecipeError

    with pytest.raises(RecipeError, match=r"sampling\.sampler: unknown sampler 'ddpm'; the built-in samplers are"):
        tiny("sampling.sampler=ddpm")
    with pytest.raises(RecipeError, match=r"sampling\.guidance_high: the ddpm sampler guides every step"):
        tiny("objective.name=ddpm", "sampling.sampler=ddpm", "sampling.cfg_scale=1.5", "sampling.guidance_high=0.7")
    assert tiny("objective.name=ddpm", "sampling.sampler=ddpm", "sampling.cfg_scale=1.5").sampling.sampler == "ddpm"


def test_ddpm_sampler_draws_its_noise_from_the_given_generator_only():
    """Sample grids must not consume the training RNG (a resumed run would see other random numbers)."""
    objective = DDPM(DDPM.Config())
    model, cond = ExactEps(objective, var_value=0.0), torch.zeros(8, dtype=torch.long)
    before = torch.get_rng_state()
    first, second = (
        ddpm_sample(model, objective, _noise(8), cond, steps=20, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, second)
    other = ddpm_sample(model, objective, _noise(8), cond, steps=20, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(first, other)


def test_learned_sigma_values_pick_beta_at_plus_one_and_the_posterior_variance_at_minus_one():
    """Two respaced steps (n = 999 → 0): the only noisy step has β ≈ 1 but β̃ ≈ 1e-4, so v = +1 (Σ = β) leaves
    unit-scale noise in the sample and v = −1 (Σ = β̃) almost none; the final step is noiseless."""
    objective = DDPM(DDPM.Config())
    cond = torch.zeros(4000, dtype=torch.long)
    spreads = {}
    for value in (1.0, -1.0):
        generator = torch.Generator().manual_seed(0)
        x = ddpm_sample(ExactEps(objective, value), objective, _noise(4000), cond, steps=2, generator=generator)
        spreads[value] = x.std().item()
    assert spreads[1.0] > 0.9 and spreads[-1.0] < 0.1
