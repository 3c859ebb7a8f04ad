"""Clusters: two torchrun agents (``--nnodes=2``, c10d rendezvous on 127.0.0.1) form one 2-process job, and a
Slurm step that runs ``python -m haste_core.run`` on several tasks without torchrun fails with the command to use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from haste_core.cluster import TORCHRUN_VARIABLES, check_launcher
from haste_core.errors import HasteError
from haste_core.weights import checkpoint
from tests.conftest import REPO, TINY_RECIPE

SLURM_TWO_TASKS = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_NNODES": "2", "SLURM_JOB_ID": "7"}


def without_torchrun(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key not in TORCHRUN_VARIABLES}


def test_srun_without_torchrun_fails_with_the_command_to_use(tmp_path):
    env = without_torchrun({**os.environ, **SLURM_TWO_TASKS})
    result = subprocess.run(
        [sys.executable, "-m", "haste_core.run", str(TINY_RECIPE), f"run.output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Slurm started 2 tasks of this program without torchrun" in result.stderr
    assert 'srun --ntasks-per-node=1 torchrun --nnodes="$SLURM_NNODES"' in result.stderr
    assert f"-m haste_core.run {TINY_RECIPE} run.output_dir={tmp_path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_launcher_check_passes_torchrun_and_single_tasks():
    check_launcher(["r.yaml"], {**SLURM_TWO_TASKS, "LOCAL_RANK": "0", "RANK": "1", "WORLD_SIZE": "2"})
    check_launcher(["r.yaml"], {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"})
    check_launcher(["r.yaml"], {})
    with pytest.raises(HasteError, match="without torchrun"):
        check_launcher(["r.yaml"], SLURM_TWO_TASKS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_agents_form_one_job(tmp_path):
    """The multi-node path on one machine: two agents, one process each, one c10d rendezvous."""
    port = free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=haste-two-agents", "-m", "haste_core.run",
        str(TINY_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=5",
    ]  # fmt: skip
    env = without_torchrun({**os.environ, "OMP_NUM_THREADS": "1"})
    agents = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(outputs)
    log = "".join(outputs)
    assert "2 process(es) on cpu" in log
    state = checkpoint.load(tmp_path / "tiny" / "checkpoints" / "latest.pt")
    assert state["world_size"] == 2 and state["step"] == 5 and len(state["rng"]) == 2
    assert state["phase"]["stopped"] == {"repa": 4, "attention": 4}
