"""The wandb monitor never stops training: without credentials it records offline instead of waiting at a login
prompt, and an unreachable server makes it fall back to offline recording."""

from __future__ import annotations

import pytest
from haste_wandb.monitor import has_credentials, project

from tests.conftest import TINY_RECIPE, run_module
from tests.fixtures.wandb_records import wandb_items, wandb_records


def test_the_monitor_is_off_unless_asked_for_and_names_its_project(monkeypatch):
    monkeypatch.delenv("HASTE_WANDB", raising=False)
    assert project() is None
    for value, expected in (("0", None), ("off", None), ("1", "haste"), ("my-lab", "my-lab")):
        monkeypatch.setenv("HASTE_WANDB", value)
        assert project() == expected


def test_credentials_come_from_the_environment_or_netrc(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not has_credentials()  # no file
    (tmp_path / "netrc").write_text("machine example.org login user password secret\n")
    (tmp_path / "netrc").chmod(0o600)
    assert not has_credentials()
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password secret\n")
    assert has_credentials()
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert has_credentials()


@pytest.mark.slow
def test_an_unreachable_server_falls_back_to_offline_recording(tmp_path):
    env = {
        "HASTE_WANDB": "haste-tests", "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
        "HASTE_WANDB_TIMEOUT": "5", "WANDB_SILENT": "true",
    }  # fmt: skip
    result = run_module(
        "haste_core.cli", "run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=2", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "wandb could not start online" in result.stderr and "recording offline instead" in result.stderr
    assert (tmp_path / "tiny" / "checkpoints" / "step_00000002.pt").is_file()
    (run_file,) = (tmp_path / "tiny" / "wandb").glob("offline-run-*/run-*.wandb")
    steps = [
        wandb_items(r.history.item)["_step"]
        for r in wandb_records(run_file)
        if r.WhichOneof("record_type") == "history"
    ]
    assert steps == [1, 2]
