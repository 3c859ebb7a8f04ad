"""The Euler sampler and guidance against closed-form answers; sample grids and PNG files."""

from __future__ import annotations

import torch
from haste_objectives.flow import Flow
from PIL import Image

from haste_core.eval.grid import grid_columns, make_grid, save_png
from haste_core.eval.samplers import euler_sample
from haste_core.interfaces import StudentOutput

MEAN, STD = 2.0, 0.5


class ExactGaussianVelocity(torch.nn.Module):
    """The exact flow velocity for data x0 ~ N(MEAN, STD²) on the linear path x_t = (1−t)x0 + tε.

    With a = 1−t and b = t, E[ε − x0 | x_t] = −MEAN + (b − a·STD²)/(a²·STD² + b²) · (x_t − a·MEAN).
    Class 1 shifts the data mean by +1 and the null class (2) by −1, to test guidance.
    """

    def forward(self, x_t, t, cond, capture=None):
        shift = torch.where(cond == 1, 1.0, torch.where(cond == 2, -1.0, 0.0)).view(-1, 1)
        mean = MEAN + shift
        a, b = (1 - t).view(-1, 1), t.view(-1, 1)
        velocity = -mean + (b - a * STD**2) / (a**2 * STD**2 + b**2) * (x_t - a * mean)
        return StudentOutput(pred=velocity)

    def null_cond(self, cond):
        return torch.full_like(cond, 2)


def test_euler_sampler_reproduces_the_data_distribution():
    torch.manual_seed(0)
    noise = torch.randn(20_000, 1)
    x = euler_sample(
        ExactGaussianVelocity(), Flow(Flow.Config()), noise, torch.zeros(20_000, dtype=torch.long), steps=200
    )
    assert abs(x.mean().item() - MEAN) < 0.02
    assert abs(x.std().item() - STD) < 0.02


def test_guidance_extrapolates_from_the_null_condition():
    torch.manual_seed(0)
    noise = torch.randn(20_000, 1)
    cond = torch.ones(20_000, dtype=torch.long)
    unguided = euler_sample(ExactGaussianVelocity(), Flow(Flow.Config()), noise, cond, steps=100)
    guided = euler_sample(ExactGaussianVelocity(), Flow(Flow.Config()), noise, cond, steps=100, cfg_scale=2.0)
    assert abs(unguided.mean().item() - (MEAN + 1)) < 0.02
    # v = v_u + 2(v_c − v_u) is the velocity field of the data mean MEAN−1 + 2·((MEAN+1) − (MEAN−1)) = MEAN + 3,
    # while the spread (same for both conditions) is unchanged
    assert abs(guided.mean().item() - (MEAN + 3)) < 0.02
    assert abs(guided.std().item() - STD) < 0.02


def test_grid_layout_and_png(tmp_path):
    images = torch.stack([torch.full((1, 8, 8), 10 * i, dtype=torch.uint8) for i in range(12)])
    grid = make_grid(images, columns=5, pad=1, min_side=16)
    assert grid.shape == (1, 3 * 17 + 1, 5 * 17 + 1)  # 3 rows of 5, each image enlarged to 16 px
    assert grid[0, 1, 1] == 0 and grid[0, 1 + 17, 1 + 2 * 17] == 70  # image 7 sits in row 1, column 2
    save_png(grid, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as png:
        assert png.size == (86, 52) and png.mode == "L"
    assert grid_columns(100, 10) == 10 and grid_columns(64, 1000) == 8
