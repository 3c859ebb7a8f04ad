"""The README stays true: its plugin example works as written, and its commands exist."""

from __future__ import annotations

import re

import pytest
import torch

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.testing import check_termination
from haste_core.train.trainer import Trainer
from tests.conftest import REPO, TINY_RECIPE

README = (REPO / "README.md").read_text()


def readme_plugin_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    (source,) = [block for block in blocks if "haste_lossstop" in block]
    return source


def test_readme_plugin_example_runs_in_a_recipe(tmp_path):
    module = tmp_path / "haste_lossstop.py"
    module.write_text(readme_plugin_source())
    overrides = [
        f"run.output_dir={tmp_path}",
        f"plugins=[{module}]",
        "termination={name: below_threshold, term: align/repa, threshold: -0.05, every: 1}",
    ]
    recipe, plugins = load_recipe(TINY_RECIPE, overrides)
    assert plugins.registry("terminations").get("below_threshold").plugin == "haste_lossstop"
    check_termination(plugins.registry("terminations").get("below_threshold"), labels=["repa"])
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(recipe, plugins, env)
    trainer.fit()
    stopped_at = trainer.plan.stopped["repa"]
    assert 1 <= stopped_at < recipe.run.max_steps
    assert trainer.stage.teachers == {}


@pytest.mark.parametrize("target", ["demo", "test", "bench"])
def test_readme_make_targets_exist(target):
    assert f"make {target}" in README
    assert re.search(rf"^{target}:", (REPO / "Makefile").read_text(), flags=re.MULTILINE)


def test_readme_demo_command_is_the_makefile_command():
    command = "torchrun --standalone --nproc_per_node=2 -m haste_core.run recipes/quickstart.yaml"
    assert command in README
    assert (
        "torchrun --standalone --nproc_per_node=$(NPROC) -m haste_core.run recipes/quickstart.yaml"
        in (REPO / "Makefile").read_text()
    )
