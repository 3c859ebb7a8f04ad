"""Bad input anywhere gets one paragraph naming the file and what to do, exit status 2, no traceback, and nothing
already written damaged; a run that fails before its first checkpoint never blocks the corrected command."""

from __future__ import annotations

import errno

import pytest
import torch

from haste_core.cli import main as haste
from haste_core.errors import CheckpointError
from haste_core.weights import checkpoint
from tests.conftest import TINY_RECIPE
from tests.train.test_trainer import trainer_for


def haste_run(tmp_path, *overrides: str) -> int:
    return haste(["run", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=1", *overrides])


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_an_override_that_is_not_yaml(tmp_path, capsys):
    assert haste(["check", str(TINY_RECIPE), "optimizer.lr=[1,"]) == 2
    assert "override 'optimizer.lr=[1,': '[1,' is not a valid YAML value" in error_of(capsys)


def test_a_recipe_that_is_not_utf8(tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("# caf\u00e9\n".encode("latin-1") + TINY_RECIPE.read_bytes())
    assert haste(["check", str(recipe)]) == 2
    assert f"{recipe} is not UTF-8 text (byte 0xe9 at position 5); save the recipe as UTF-8" in error_of(capsys)


@pytest.mark.parametrize("setting", ["teacher.weights", "run.init_from"])
def test_a_bad_weights_file_fails_cleanly_and_the_corrected_command_runs(tmp_path, capsys, setting):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a torch file")
    assert haste_run(tmp_path, f"{setting}={bad}") == 2
    wanted = f"cannot read {bad}" if setting == "teacher.weights" else f"checkpoint {bad} cannot be read"
    assert wanted in error_of(capsys)
    assert not (tmp_path / "tiny" / "recipe.yaml").exists()  # everything that can fail is built before writing
    assert haste_run(tmp_path) == 0  # the corrected command: not refused as "a different run"


def test_a_folder_left_by_a_run_without_checkpoints_is_free(tmp_path, capsys):
    assert haste_run(tmp_path, "run.checkpoint_every=0", "run.max_steps=1", "optimizer.lr=0.5") == 0
    (tmp_path / "tiny" / "checkpoints" / "latest.pt").unlink()
    (tmp_path / "tiny" / "checkpoints" / "step_00000001.pt").unlink()
    assert haste_run(tmp_path) == 0


def test_a_corrupt_recipe_yaml_in_a_run_folder(tmp_path, capsys):
    assert haste_run(tmp_path) == 0
    saved = tmp_path / "tiny" / "recipe.yaml"
    saved.write_text("run: {name: [")
    kept = (tmp_path / "tiny" / "checkpoints" / "latest.pt").read_bytes()
    assert haste_run(tmp_path, "run.max_steps=2") == 2
    assert f"{saved} is damaged (" in error_of(capsys)
    assert (tmp_path / "tiny" / "checkpoints" / "latest.pt").read_bytes() == kept
    saved.unlink()  # what the message suggests: the checkpoint's recipe is checked instead
    assert haste_run(tmp_path, "run.max_steps=2") == 0


def test_a_file_where_the_run_folder_should_be(tmp_path, capsys):
    (tmp_path / "tiny").write_text("a file")
    assert haste_run(tmp_path) == 2
    assert "is a file, not a folder; nothing was written" in error_of(capsys)
    assert (tmp_path / "tiny").read_text() == "a file"


@pytest.mark.parametrize(
    ("strategy", "suffix", "latest"), [("ddp", ".pt", "latest.pt"), ("fsdp2", ".dcp", "latest.dcp")]
)
def test_a_full_disk_keeps_the_earlier_checkpoints(tiny, plugins, monkeypatch, strategy, suffix, latest):
    """A file (DDP) or a sharded folder (FSDP2) that cannot be written leaves nothing partial behind."""
    recipe = tiny("run.checkpoint_every=2", "run.max_steps=4", f"distributed.strategy={strategy}")
    trainer = trainer_for(recipe, plugins)
    real_save = torch.save

    def save_until_full(obj, handle, *args, **kwargs):
        if trainer.step == 4:
            handle.write(b"half of it")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(CheckpointError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert f"step_00000004{suffix}: no space left on device" in message
    assert f"the earlier checkpoints are kept (step_00000002{suffix})" in message
    folder = trainer.recipe.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [latest, f"step_00000002{suffix}"]  # nothing partial
    assert checkpoint.load(folder / latest)["step"] == 2


def test_a_corrupt_cached_teacher_is_rebuilt_saying_so(tiny, plugins, tmp_path, monkeypatch, caplog):
    from haste_teachers import digits_vit

    monkeypatch.setenv("HASTE_CACHE", str(tmp_path))
    monkeypatch.setattr(digits_vit, "train_digits_vit", lambda *a: (digits_vit.DigitsViTNet().state_dict(), 0.5))
    path = digits_vit.cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    trainer = trainer_for(tiny("teacher.weights=cache"), plugins)
    assert trainer.stage.teachers["teacher"].heldout_accuracy == 0.5
    assert f"the cached weights {path} are unreadable" in caplog.text and "training them again" in caplog.text
    assert torch.load(path, weights_only=True)["heldout_accuracy"] == 0.5
