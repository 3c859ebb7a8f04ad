"""torch.compile of the student: the same losses as eager for a few steps through the phase change, no graph
break, and one recompile at the phase change only."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from haste_core import distributed
from haste_core.train.trainer import Trainer
from tests.train.test_accumulate import record_logged

CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def losses(tiny, plugins, *overrides: str) -> list[dict[str, float]]:
    recipe = tiny("run.max_steps=6", *overrides)
    trainer = Trainer(recipe, plugins, CPU)
    logged = record_logged(trainer)
    trainer.fit()
    return [{k: v for k, v in m.items() if k.startswith(("loss/", "align/"))} for m in logged]


@pytest.mark.slow
def test_compiled_student_gives_eager_losses_with_one_graph_per_phase(tiny, plugins, caplog):
    eager = losses(tiny, plugins, "run.name=eager")
    torch._dynamo.reset()
    counters.clear()
    with caplog.at_level("INFO", logger="haste"):
        compiled = losses(tiny, plugins, "run.name=compiled", "compile.student=true", "compile.backend=aot_eager")
    assert len(compiled) == len(eager) == 6
    for a, b in zip(eager, compiled, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 2  # Phase I (capturing) and Phase II: one recompile
    assert "the compiled student recompiles once" in caplog.text
