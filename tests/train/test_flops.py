"""The FLOP model of a training step (a hand count for a tiny SiT, SiT-XL/2's published figure), the peak table,
and perf/mfu with the teacher's and alignments' shares as a run logs them."""

from __future__ import annotations

import pytest
import torch
from haste_students.sit import SiT, SiTArch

from haste_core import distributed
from haste_core.interfaces import DataSpec
from haste_core.train.flops import PEAK_TFLOPS, StepFlops, forward_flops, mfu, peak_tflops
from haste_core.train.trainer import Trainer
from tests.train.test_accumulate import record_logged

CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
TIMESTEP_FREQUENCY_DIM = 256  # the sinusoidal features the timestep MLP reads (DiT)


def sit(data: DataSpec, depth: int, width: int, heads: int, patch: int) -> SiT:
    arch = SiTArch(depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
    config = SiT.Config()
    return SiT(config, arch=arch, data=data, spec=SiT.describe(config, data=data, arch=arch))


def hand_count_forward(channels: int, side: int, depth: int, width: int, patch: int, mlp_ratio: int = 4) -> int:
    """Multiply-accumulates of one SiT forward for one sample, times 2."""
    tokens, d = (side // patch) ** 2, width
    embed = tokens * channels * patch * patch * d + TIMESTEP_FREQUENCY_DIM * d + d * d
    block = 6 * d * d + tokens * (3 * d * d + d * d + 2 * mlp_ratio * d * d) + 2 * tokens * tokens * d
    final = 2 * d * d + tokens * d * patch * patch * channels
    return 2 * (embed + depth * block + final)


def test_tiny_sit_forward_matches_the_hand_count():
    data = DataSpec(x_shape=(4, 16, 16), image_shape=(3, 16, 16), num_classes=10, num_items=8)
    student = sit(data, depth=4, width=64, heads=4, patch=2)  # sit_micro_2
    x, t, y = torch.randn(1, 4, 16, 16), torch.rand(1), torch.zeros(1, dtype=torch.long)
    assert forward_flops(lambda: student(x, t, y)) == hand_count_forward(4, 16, depth=4, width=64, patch=2)
    # twice the batch, twice the FLOPs
    two = forward_flops(lambda: student(x.repeat(2, 1, 1, 1), t.repeat(2), y.repeat(2)))
    assert two == 2 * hand_count_forward(4, 16, depth=4, width=64, patch=2)


def test_sit_xl_2_at_256_px_is_712_gflop_per_image_step():
    """On the meta device: shapes only, no memory."""
    data = DataSpec(x_shape=(4, 32, 32), image_shape=(3, 256, 256), num_classes=1000, num_items=8)
    with torch.device("meta"):
        student = sit(data, depth=28, width=1152, heads=16, patch=2)
        x, t, y = torch.randn(1, 4, 32, 32), torch.rand(1), torch.zeros(1, dtype=torch.long)
    step = 3 * forward_flops(lambda: student(x, t, y))
    assert step == 3 * hand_count_forward(4, 32, depth=28, width=1152, patch=2)
    assert step / 1e9 == pytest.approx(712, abs=0.5)


def test_peak_table_override_and_mfu():
    assert peak_tflops(torch.device("cpu"), "bf16", True) is None
    assert peak_tflops(torch.device("cpu"), "fp32", False, override=50.0) == 50.0
    assert [name for name, _, _ in PEAK_TFLOPS].index("H100 PCIe") < [n for n, _, _ in PEAK_TFLOPS].index("H100")
    assert mfu(712_000_000_000, 555.0, 989.4) == pytest.approx(0.3994, abs=1e-4)
    phase_one = StepFlops(trained=90, teacher=10, alignment=30)
    assert phase_one.shares() == {"perf/flops_share/teacher": 0.1, "perf/flops_share/alignment": 0.3}
    assert StepFlops(trained=90).shares() == {}


def test_run_logs_throughput_mfu_and_phase_one_shares(tiny, plugins):
    recipe = tiny("run.max_steps=6", "perf.peak_tflops=0.5")
    trainer = Trainer(recipe, plugins, CPU)
    logged = record_logged(trainer)
    trainer.fit()
    first, last = logged[0], logged[-1]
    for metrics in (first, last):
        per_gpu = metrics["perf/samples_per_s_per_gpu"]
        assert per_gpu == pytest.approx(recipe.data.global_batch_size / metrics["perf/step_s"])
        assert metrics["perf/mfu"] == pytest.approx(metrics["perf/gflop_per_sample"] * 1e9 * per_gpu / 0.5e12)
    assert 0 < first["perf/flops_share/teacher"] < 1 and 0 < first["perf/flops_share/alignment"] < 1
    assert "perf/flops_share/teacher" not in last  # Phase II: no teacher, no alignment
    assert last["perf/gflop_per_sample"] < first["perf/gflop_per_sample"] * (1 - first["perf/flops_share/teacher"])
