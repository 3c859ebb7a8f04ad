"""Reliability: what a run survives, each promise of docs/reliability.md tried with real processes on the CPU.

Hard kills (kill -9) right after a checkpoint write, between checkpoints and across the termination step resume
bit-identical to an uninterrupted run, also under a 2-process torchrun; SIGTERM, SIGINT and SIGUSR1 save and exit
with status 75, a second signal exits at once; a second command on a live run folder, and two commands started at
the same moment, leave one run and a clear message.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from haste_core.weights import checkpoint
from tests.conftest import REPO, TINY_RECIPE
from tests.train.test_trainer import trainer_for

INTERRUPT = REPO / "tests" / "fixtures" / "interrupt.py"
EXIT_PREEMPTED = 75


def haste_run(out: Path, *overrides: str, torchrun: bool = False) -> list[str]:
    """The command line of a tiny run in ``out`` with the interrupting plugin loaded (idle unless told)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    return [
        sys.executable, *launcher, "-m", "haste_core.run", str(TINY_RECIPE), f"run.output_dir={out}",
        f"plugins=[{INTERRUPT}]", "run.checkpoint_every=1", "run.keep_checkpoints=0", *overrides,
    ]  # fmt: skip


def run(command: list[str], interrupt: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HASTE_TEST_INTERRUPT": interrupt, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def final_state(run_dir: Path) -> dict:
    return checkpoint.load(checkpoint.latest_path(run_dir))


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical training state: weights, EMA, optimiser moments, data position, phase, step."""
    assert a["step"] == b["step"] and a["data"] == b["data"] and a["phase"] == b["phase"]
    for key in ("student", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    moments_a, moments_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert moments_a.keys() == moments_b.keys()
    for index, moments in moments_a.items():
        for name, tensor in moments.items():
            assert torch.equal(tensor, moments_b[index][name]), (index, name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, plugins) -> Path:
    """The uninterrupted 8-step tiny run (termination at step 4)."""
    from haste_core.config.recipe import load_recipe

    out = tmp_path_factory.mktemp("straight")
    recipe = load_recipe(TINY_RECIPE, haste_run(out)[4:])[0]
    trainer_for(recipe, plugins).fit()
    return out / "tiny"


def finish_in_process(out: Path, plugins, *overrides: str) -> None:
    """Resume the run in ``out`` to its end, in this process."""
    from haste_core.config.recipe import load_recipe

    trainer = trainer_for(load_recipe(TINY_RECIPE, haste_run(out, *overrides)[4:])[0], plugins)
    assert 0 < trainer.step < 8
    trainer.fit()


def test_kill_9_at_any_point_then_resume_is_bit_identical(straight, tmp_path, plugins):
    command = haste_run(tmp_path)
    checkpoints = tmp_path / "tiny" / "checkpoints"
    # right after writing step 3; at the termination step 4 (before its checkpoint); between two writes (step 6)
    for interrupt, latest in [("checkpoint_saved:3:KILL", 3), ("step_end:4:KILL", 3), ("step_end:6:KILL", 5)]:
        killed = run(command, interrupt)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert checkpoint.load(checkpoints / "latest.pt")["step"] == latest
        (checkpoints / f".step_{latest + 1:08d}.pt.1234.tmp").write_bytes(b"half a checkpoint")  # a write cut short
    assert "resuming at step 3" in killed.stderr
    finish_in_process(tmp_path, plugins)  # from the Phase II checkpoint of step 5
    assert_same_state(final_state(straight), final_state(tmp_path / "tiny"))


def test_stop_signals_save_exit_with_status_75_and_resume_bit_identical(straight, tmp_path, plugins):
    command = haste_run(tmp_path, "run.checkpoint_every=0")  # no regular checkpoint: the signals' are the only ones
    checkpoints = tmp_path / "tiny" / "checkpoints"
    for name, step in [("TERM", 2), ("INT", 4), ("USR1", 6)]:  # INT at the termination step
        stopped = run(command, f"step_end:{step}:{name}")
        assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr
        saved = checkpoints / f"step_{step:08d}.pt"
        assert f"SIG{name}: stopped after step {step} of 8 and saved {saved}" in stopped.stderr
        assert "(exit status 75)" in stopped.stderr
        assert "Traceback" not in stopped.stderr and f"step {step + 1}/8" not in stopped.stderr
        assert checkpoint.step_files(tmp_path / "tiny")[-1] == saved
    finish_in_process(tmp_path, plugins, "run.checkpoint_every=0")
    assert_same_state(final_state(straight), final_state(tmp_path / "tiny"))


def test_a_second_signal_exits_at_once_without_saving(tmp_path):
    stopped = run(haste_run(tmp_path, "run.checkpoint_every=0"), "step_end:5:TERM::2")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "second stop signal (SIGTERM): exiting now, without saving" in stopped.stderr
    assert checkpoint.step_files(tmp_path / "tiny") == []


def test_a_second_command_on_a_live_run_is_refused_and_a_signal_from_outside_stops_it(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = haste_run(tmp_path, "run.max_steps=100000", "run.checkpoint_every=0", "run.log_every=1")
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) as first:
        for line in first.stderr:
            if line.startswith("[haste] step 2/"):
                break
        second = run(command)  # the same command resubmitted while the first still trains
        first.send_signal(signal.SIGTERM)
        rest = first.stderr.read()
        assert first.wait(timeout=120) == EXIT_PREEMPTED, rest
    assert second.returncode == 2
    assert f"is in use by another haste run (pid {first.pid} on host " in second.stderr
    assert "Traceback" not in second.stderr
    step = int(re.search(r"stopped after step (\d+) of 100000", rest).group(1))
    assert [p.name for p in checkpoint.step_files(tmp_path / "tiny")] == [f"step_{step:08d}.pt"]


def test_two_runs_started_at_the_same_moment_leave_one_resumable_run(tiny, plugins, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [haste_run(tmp_path, f"optimizer.lr={lr}", "run.max_steps=6") for lr in ("1e-3", "2e-3")]
    processes = [subprocess.Popen(c, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for c in commands]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    for process in processes:
        process.stderr.close()
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    loser = next(text for code, text in outcomes if code == 2)
    assert "is in use by another haste run" in loser or "already holds a different run" in loser
    winner_lr = next(lr for (code, _), lr in zip(outcomes, (1e-3, 2e-3), strict=True) if code == 0)
    run_dir = tmp_path / "tiny"
    assert list((run_dir / "checkpoints").glob(".*.tmp")) == []
    for path in checkpoint.step_files(run_dir):
        assert checkpoint.load(path)["recipe"]["optimizer"]["lr"] == winner_lr
    # the folder is one run: the winner's recipe resumes it
    recipe = tiny(f"optimizer.lr={winner_lr}", f"plugins=[{INTERRUPT}]", "run.checkpoint_every=1",
                  "run.keep_checkpoints=0", "run.max_steps=7")  # fmt: skip
    resumed = trainer_for(recipe, plugins)
    assert resumed.step == 6


@pytest.mark.slow
def test_kill_9_under_torchrun_then_resume_is_bit_identical(tmp_path):
    straight = run(haste_run(tmp_path / "a", "run.max_steps=6", torchrun=True))
    assert straight.returncode == 0, straight.stderr
    command = haste_run(tmp_path / "b", "run.max_steps=6", torchrun=True)
    killed = run(command, "step_end:5:KILL:1")  # rank 1 dies; torchrun ends rank 0
    assert killed.returncode != 0
    assert checkpoint.load(checkpoint.latest_path(tmp_path / "b" / "tiny"))["step"] == 4
    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(final_state(tmp_path / "a" / "tiny"), final_state(tmp_path / "b" / "tiny"))


def test_a_stalled_rank_makes_the_other_exit_naming_the_collective_and_the_rank(tmp_path):
    """Two processes (the environment torchrun would give them); rank 1 is stopped (SIGSTOP) after step 2."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = haste_run(tmp_path, "run.checkpoint_every=0", "run.collective_timeout_s=5")
    processes = []
    for rank in (0, 1):
        ranks = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_PORT": str(port)}
        env = {**os.environ, **ranks, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
               "HASTE_TEST_INTERRUPT": "step_end:2:STOP:1"}  # fmt: skip
        processes.append(subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO))
    try:
        started = time.monotonic()
        error = processes[0].communicate(timeout=240)[1]
        assert processes[0].returncode == 3, error
        assert time.monotonic() - started < 200
    finally:
        processes[1].kill()
        processes[1].communicate()
    line = next(line for line in error.splitlines() if line.startswith("error: rank 0 of 2: "))
    assert line.startswith(
        "error: rank 0 of 2: the DDP collectives of step 3 (buffer broadcast, gradient all_reduce) timed out after 5 s "
        "waiting for the other processes; one of them is stalled or gone"
    )
    assert "raise run.collective_timeout_s" in line and "Traceback" not in error


def test_the_run_lock_is_exclusive_names_its_holder_and_frees_on_release(tmp_path):
    from haste_core.errors import RunFolderError
    from haste_core.train.lock import RunLock

    held = RunLock.acquire(tmp_path / "run")
    holder = f"pid {os.getpid()} on host {socket.gethostname()}"
    with pytest.raises(RunFolderError, match=re.escape(f"is in use by another haste run ({holder}, since ")):
        RunLock.acquire(tmp_path / "run")  # flock: a second open file conflicts even within one process
    held.release()
    RunLock.acquire(tmp_path / "run").release()


def test_temporary_checkpoint_names_are_unique(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (renamed.append(Path(a).name), real_replace(a, b)))
    for _ in range(2):  # two writers of the same step never share a temporary file
        checkpoint.save({"step": 1}, tmp_path, 1, keep=0)
    temporary = [name for name in renamed if name.startswith(".step_00000001.pt.")]
    assert len(temporary) == 2 and len(set(temporary)) == 2 and ".step_00000001.pt.tmp" not in temporary
