"""Checkpoint files: atomic writes, latest.pt, pruning, and clear errors for unreadable files."""

from __future__ import annotations

import os

import pytest
import torch

from haste_core.errors import CheckpointError
from haste_core.weights import checkpoint


def test_save_writes_step_file_and_latest(tmp_path):
    path = checkpoint.save({"step": 3, "weights": torch.ones(2)}, tmp_path, 3, keep=0)
    assert path == tmp_path / "checkpoints" / "step_00000003.pt"
    latest = checkpoint.latest_path(tmp_path)
    assert os.path.samefile(latest, path)
    state = checkpoint.load(latest)
    assert state["step"] == 3 and state["format"] == checkpoint.FORMAT
    assert torch.equal(state["weights"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.pt", "step_00000003.pt"]


def test_keep_prunes_old_steps_but_not_latest(tmp_path):
    for step in (1, 2, 3, 4):
        checkpoint.save({"step": step}, tmp_path, step, keep=2)
    assert [p.name for p in checkpoint.step_files(tmp_path)] == ["step_00000003.pt", "step_00000004.pt"]
    assert checkpoint.load(checkpoint.latest_path(tmp_path))["step"] == 4


def test_failed_save_leaves_earlier_checkpoints_intact(tmp_path, monkeypatch):
    checkpoint.save({"step": 1}, tmp_path, 1, keep=0)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match=r"step_00000002\.pt: no space left on device; nothing was overwritten"):
        checkpoint.save({"step": 2}, tmp_path, 2, keep=0)
    monkeypatch.undo()
    assert not checkpoint.step_path(tmp_path, 2).exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.pt", "step_00000001.pt"]
    assert checkpoint.load(checkpoint.latest_path(tmp_path))["step"] == 1


def test_unreadable_checkpoint_names_the_alternatives(tmp_path):
    checkpoint.save({"step": 1}, tmp_path, 1, keep=0)
    bad = checkpoint.step_path(tmp_path, 2)
    bad.write_bytes(checkpoint.step_path(tmp_path, 1).read_bytes()[:100])  # truncated
    with pytest.raises(
        CheckpointError, match=r"step_00000002.pt cannot be read .* other checkpoints in .*: step_00000001.pt"
    ):
        checkpoint.load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="is not a haste checkpoint \\(format None"):
        checkpoint.load(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nothing.pt")


def test_rng_state_round_trip():
    state = checkpoint.capture_rng()
    first = torch.rand(3)
    checkpoint.restore_rng(state)
    assert torch.equal(torch.rand(3), first)
