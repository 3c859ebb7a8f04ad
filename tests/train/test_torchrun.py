"""A real 2-process torchrun run on the CPU (gloo): one process trains the teacher while the other waits, the
ranks stay in step across staggered terminations, and the TensorBoard event files hold the documented tags with
align/active going from 1 to 0 when the last alignment stops."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY_RECIPE, run_module

DOCUMENTED_TAGS = {
    "loss/total", "loss/denoise", "align/repa", "align/attention", "align/active", "optim/lr", "optim/grad_norm",
    "perf/step_s", "perf/samples_per_s", "perf/peak_mem_mb", "termination/fired",
}  # fmt: skip


@pytest.mark.slow
def test_two_process_torchrun_run(tmp_path):
    cache = tmp_path / "cold_cache"
    result = run_module(
        "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "plugins=[rank_report.py]",
        "run.sample_every=4", "teacher.weights=cache", "alignment.1.termination={name: fixed_step, step: 2}",
        env={"HASTE_CACHE": str(cache)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "tiny"
    assert "starting: sit_micro_2 (0.33M parameters), 2 process(es) on cpu" in result.stderr

    reports = [json.loads((run_dir / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["trained_the_teacher"] for r in reports] == [True, False]  # rank 1 waited and read the cache
    assert [p.name for p in (cache / "digits_vit").iterdir()] == ["digits_vit_v1_heldout0.2_split0_seed0.pt"]
    assert [r["world_size"] for r in reports] == [2, 2] and [r["step"] for r in reports] == [8, 8]
    assert all(r["terminated"] == {"attention": 2, "repa": 4} for r in reports)
    assert all(r["teachers_alive"] == 0 and r["error"] is None for r in reports)
    assert reports[0]["student_sha256"] == reports[1]["student_sha256"]  # DDP kept the ranks identical

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags >= DOCUMENTED_TAGS, DOCUMENTED_TAGS - tags
    active = {e.step: e.value for e in events.Scalars("align/active")}
    assert active == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0, 6: 0.0, 7: 0.0, 8: 0.0}
    assert [e.step for e in events.Scalars("align/attention")] == [1, 2]  # attention stopped first
    assert [e.step for e in events.Scalars("align/repa")] == [1, 2, 3, 4]
    assert [(e.step, e.value) for e in events.Scalars("termination/fired/attention")] == [(2, 2.0)]
    assert [(e.step, e.value) for e in events.Scalars("termination/fired")] == [(4, 4.0)]
    assert [e.step for e in events.Scalars("loss/denoise")] == list(range(1, 9))
    assert all(e.value > 0 for e in events.Scalars("perf/samples_per_s"))
    assert [e.step for e in events.Images("samples/ema")] == [4, 8]
    assert "recipe" in "".join(events.Tags()["tensors"])
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_00000004.png", "step_00000008.png"]
