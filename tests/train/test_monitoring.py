"""What a run shows its user, read back from the real files of one real run: separate termination texts,
HParams, attention pictures (TensorBoard event files and PNGs) and the wandb monitor's offline run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from haste_core.train.attention_pictures import GAP, query_positions, tiles
from tests.conftest import TINY_RECIPE, run_module
from tests.fixtures.wandb_records import wandb_items, wandb_records

# tiny.yaml: 8 steps, both alignments stop after step 4 (one run-wide policy); grids at 3 (Phase I), 6 and 8
SAMPLE_EVERY = 3
PHASE_I_STEP, PHASE_II_STEPS = 3, (6, 8)
PAIRS = ("pair_1_2", "pair_2_3")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("monitored")
    env = {"HASTE_WANDB": "haste-tests", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = run_module(
        "haste_core.cli", "run", str(TINY_RECIPE), f"run.output_dir={out}", f"run.sample_every={SAMPLE_EVERY}", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "wandb monitor" not in result.stderr  # no warning: the monitor ran
    return out / "tiny"


@pytest.fixture(scope="module")
def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def picture(events: EventAccumulator, tag: str, step: int) -> np.ndarray:
    (event,) = [e for e in events.Images(tag) if e.step == step]
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def test_query_positions_are_one_per_quadrant_and_panels_have_a_tile_per_head_and_query():
    assert query_positions(4) == [5, 7, 13, 15] and query_positions(16) == [68, 76, 196, 204]
    assert query_positions(1) == [0]
    probs = torch.softmax(torch.randn(3, 4, 16), dim=-1)
    panel = tiles(probs, 4, query_positions(4))
    assert panel.dtype == torch.uint8 and panel.shape == (3, 4 * 33 + 1, 3 * 33 + 1)  # 4×4 tokens at 8 px + 1 pad


@pytest.mark.slow
def test_two_alignments_stopping_at_one_step_get_a_text_each(events):
    texts = {tag: events.Tensors(tag) for tag in events.Tags()["tensors"] if tag.startswith("termination")}
    assert set(texts) == {"termination/repa/text_summary", "termination/attention/text_summary"}
    for label, tag_events in (("repa", texts["termination/repa/text_summary"]),
                              ("attention", texts["termination/attention/text_summary"])):  # fmt: skip
        (event,) = tag_events
        text = event.tensor_proto.string_val[0].decode()
        assert event.step == 4 and text == f"step 4: alignment `{label}` stopped (fixed_step: 4 aligned steps done)"


@pytest.mark.slow
def test_hparams_name_the_settings_and_the_final_losses(run_dir, events):
    summaries = {}
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    summaries[value.tag] = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content
                    )
    session = summaries["_hparams_/session_start_info"].session_start_info.hparams
    assert session["run/name"].string_value == "tiny" and session["student"].string_value == "sit_micro_2"
    assert session["teacher"].string_value == "digits_vit"
    assert session["alignment/repa/weight"].number_value == 0.5
    assert session["alignment/attention/weight"].number_value == 0.5
    assert session["termination"].string_value == 'fixed_step {"step": 4}'
    metrics = {info.name.tag for info in summaries["_hparams_/experiment"].experiment.metric_infos}
    assert metrics == {"loss/total", "loss/denoise"}
    assert [e.step for e in events.Scalars("loss/total")][-1] == 8  # the final value the HParams tab shows


@pytest.mark.slow
def test_attention_pictures_show_teacher_beside_student_then_the_student_alone(run_dir, events):
    tags = {tag for tag in events.Tags()["images"] if tag.startswith("attention/")}
    assert tags == {f"attention/attention/{pair}" for pair in PAIRS}
    for pair in PAIRS:
        aligned = picture(events, f"attention/attention/{pair}", PHASE_I_STEP)
        rows = 4 * 33 + 1  # 4 query positions (one per quadrant of the 4×4 grid), 8-px tiles, 1-px padding
        panel = 4 * 33 + 1  # digits_vit has 4 heads; heads: first maps sit_micro_2's 4 onto them
        assert aligned.shape == (rows, panel + GAP + panel, 3)
        teacher, student = aligned[:, :panel], aligned[:, panel + GAP :]
        assert (aligned[:, panel : panel + GAP] == 255).all()  # the white gap between the halves
        assert np.abs(teacher.astype(int) - student.astype(int)).mean() > 1.0  # two different sets of maps
        for step in PHASE_II_STEPS:
            alone = picture(events, f"attention/attention/{pair}", step)
            assert alone.shape == (rows, panel, 3)  # the student's maps alone after termination
        png = np.asarray(Image.open(run_dir / "attention" / f"step_{PHASE_I_STEP:08d}" / f"attention_{pair}.png"))
        assert (png[..., :3] == aligned).all()


# --- the wandb monitor, offline: its run file read back record by record --------------------------------------------


@pytest.mark.slow
def test_wandb_offline_run_holds_recipe_scalars_images_histograms_and_terminations(run_dir, events):
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert run_file.stem == "run-" + (run_dir / "wandb" / "run_id").read_text().strip()
    history, summary, config = {}, {}, {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = wandb_items(record.history.item)
            history[row["_step"]] = row
        elif kind == "summary":
            summary.update(wandb_items(record.summary.update))
        elif kind == "run":
            config = wandb_items(record.run.config.update)
    assert config["run"]["name"] == "tiny" and config["termination"] == {"name": "fixed_step", "step": 4}
    logged = {e.step: e.value for e in events.Scalars("loss/total")}
    assert sorted(history) == sorted(logged)
    for step, value in logged.items():
        assert history[step]["loss/total"] == pytest.approx(value, rel=1e-6)  # the same values as TensorBoard's
    assert history[1]["align/repa/cosine/_type"] == "histogram"  # nested values: one item per field
    assert history[PHASE_I_STEP]["samples/ema/_type"] == "image-file"
    assert history[PHASE_I_STEP]["attention/attention/pair_1_2/_type"] == "image-file"
    assert summary["termination/repa"] == "step 4: fixed_step: 4 aligned steps done"
    assert summary["termination/attention"] == "step 4: fixed_step: 4 aligned steps done"
    images = list(run_file.parent.glob("files/media/images/**/*.png"))
    assert len(images) == 3 * (1 + len(PAIRS))  # a grid and the pictures at steps 3, 6 and 8
