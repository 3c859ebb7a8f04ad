"""The reference code's checkpoint layouts, both ways: a reference-shaped MMDiT state dict (REPA/HASTE
``models/mmdit.py``, written out here at a tiny size) imports exactly, and haste runs export back to the REPA/HASTE
training layout and the official DiT/SiT layout, key for key and value for value."""

from __future__ import annotations

import argparse

import pytest
import torch

from haste_core import run
from haste_core.errors import CheckpointError, HasteError
from haste_core.interfaces import DataSpec
from haste_core.testing import build_student
from haste_core.weights import checkpoint
from haste_core.weights.export import export_reference
from haste_core.weights.import_checkpoint import import_checkpoint, read_checkpoint
from tests.conftest import REPO, TINY_RECIPE

TEXT = DataSpec(x_shape=(4, 16, 16), image_shape=(3, 16, 16), num_classes=0, num_items=8, text_len=5, text_dim=12,
                pooled_dim=6)  # fmt: skip
T2I_RECIPE = REPO / "tests" / "fixtures" / "tiny_t2i.yaml"


def reference_mmdit_state(depth: int, text_dim: int, channels: int, grid: int, patch: int = 2) -> dict:
    """Random tensors under the reference MMDiT's key names and shapes: width 32·depth, joint blocks of a
    ``context_block`` and an ``x_block`` (attn.qkv, attn.proj, mlp.fc1/fc2, adaLN_modulation.1; the last context
    block pre-only: no proj, no MLP, 2 modulations), no pooled-caption embedder, no learned null caption."""
    width = 32 * depth
    shapes = {"x_embedder.proj.weight": (width, channels, patch, patch), "x_embedder.proj.bias": (width,),
              "t_embedder.mlp.0.weight": (width, 256), "t_embedder.mlp.0.bias": (width,),
              "t_embedder.mlp.2.weight": (width, width), "t_embedder.mlp.2.bias": (width,),
              "context_embedder.weight": (width, text_dim), "context_embedder.bias": (width,),
              "pos_embed": (1, grid * grid, width),
              "final_layer.linear.weight": (patch * patch * channels, width),
              "final_layer.linear.bias": (patch * patch * channels,),
              "final_layer.adaLN_modulation.1.weight": (2 * width, width),
              "final_layer.adaLN_modulation.1.bias": (2 * width,)}  # fmt: skip
    for i in range(depth):
        for stream in ("context_block", "x_block"):
            pre_only = stream == "context_block" and i == depth - 1
            prefix = f"joint_blocks.{i}.{stream}."
            mods = 2 if pre_only else 6
            shapes |= {prefix + "attn.qkv.weight": (3 * width, width), prefix + "attn.qkv.bias": (3 * width,),
                       prefix + "adaLN_modulation.1.weight": (mods * width, width),
                       prefix + "adaLN_modulation.1.bias": (mods * width,)}  # fmt: skip
            if not pre_only:
                inner = 4 * width
                shapes |= {prefix + "attn.proj.weight": (width, width), prefix + "attn.proj.bias": (width,),
                           prefix + "mlp.fc1.weight": (inner, width), prefix + "mlp.fc1.bias": (inner,),
                           prefix + "mlp.fc2.weight": (width, inner), prefix + "mlp.fc2.bias": (width,)}  # fmt: skip
    generator = torch.Generator().manual_seed(depth)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def projector(width: int) -> dict:
    generator = torch.Generator().manual_seed(7)
    shapes = {0: (16, width), 2: (16, 16), 4: (8, 16)}
    return {f"projectors.0.{i}.{w}": torch.randn(shape if w == "weight" else shape[:1], generator=generator)
            for i, shape in shapes.items() for w in ("weight", "bias")}  # fmt: skip


def mmdit(plugins, **config):
    entry = plugins.registry("students").get("mmdit_d2")
    return build_student(entry, entry.cls.Config(**config), TEXT).eval()


def test_reference_mmdit_checkpoint_imports_exactly(plugins, tmp_path):
    reference = reference_mmdit_state(depth=2, text_dim=12, channels=4, grid=8)
    path = tmp_path / "t2i_0150000.pt"  # what REPA's/HASTE's train_t2i.py saves
    torch.save({"model": {**reference, **projector(64)}, "ema": {**reference, **projector(64)}, "opt": {},
                "args": argparse.Namespace(model="mmdit"), "steps": 150000}, path)  # fmt: skip
    published = read_checkpoint(path, ["projectors.0."])  # REPA's projector is an alignment head, not the student's
    assert published.layout == "repa" and set(published.heads) == {"projectors.0."}
    student = mmdit(plugins, pooled=False, attend_padding=True)
    with pytest.raises(CheckpointError, match="null_text"):  # the reference has no learned null caption
        import_checkpoint(published, student)
    empty_caption = torch.randn(5, 12)  # stands in for the prepared empty-caption embedding (Coco.null_caption())
    import_checkpoint(published, student, supply={"null_text": empty_caption})
    back = type(student).to_published(student.state_dict())
    assert back.keys() == reference.keys()
    assert all(torch.equal(back[key], reference[key]) for key in reference)
    cond = {"text": torch.randn(2, 5, 12), "text_mask": torch.tensor([[True, True, False, False, False]] * 2)}
    assert torch.equal(student.null_cond(cond)["text"][1], empty_caption)  # guidance uses the empty caption
    # attend_padding: every caption token is attended, padding too, as the reference does
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 0.8])
    all_tokens = {**cond, "text_mask": torch.ones(2, 5, dtype=torch.bool)}
    with torch.no_grad():
        assert torch.equal(student(x, t, cond).pred, student(x, t, all_tokens).pred)
        masked = mmdit(plugins, pooled=False)
        masked.load_state_dict(student.state_dict())
        assert not torch.allclose(masked(x, t, cond).pred, student(x, t, cond).pred)
    # a student with the pooled path has no counterpart in the reference
    with pytest.raises(CheckpointError, match="'null_pooled' is missing"):
        import_checkpoint(published, mmdit(plugins), supply={"null_text": empty_caption})
    with pytest.raises(CheckpointError, match="pooled: false"):
        type(student).to_published(mmdit(plugins).state_dict())


def test_sit_run_exports_to_the_reference_layouts_and_reads_back(tmp_path):
    assert run.main([str(TINY_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=2", "run.checkpoint_every=2",
                     "termination.step=100"]) == 0  # fmt: skip
    run_dir = tmp_path / "tiny"
    raw = checkpoint.load(checkpoint.latest_path(run_dir))
    repa = torch.load(export_reference(run_dir, tmp_path / "repa.pt", "repa"), weights_only=True)
    assert set(repa) == {"model", "ema", "steps"} and repa["steps"] == 2
    heads = {k: v for k, v in repa["ema"].items() if k.startswith("projectors.0.")}
    assert heads and {k: v for k, v in repa["ema"].items() if k not in heads}.keys() == raw["ema"].keys()
    assert all(torch.equal(repa["ema"][key], raw["ema"][key]) for key in raw["ema"])
    assert all(torch.equal(repa["model"][key], raw["student"][key]) for key in raw["student"])
    dit = torch.load(export_reference(run_dir, tmp_path / "dit.pt", "dit"), weights_only=True)
    assert dit.keys() == raw["ema"].keys() and all(torch.equal(dit[k], raw["ema"][k]) for k in dit)
    # and back: the exported file reads as the REPA layout, heads split off, weights exact
    published = read_checkpoint(tmp_path / "repa.pt", ["projectors.0."])
    assert published.layout == "repa" and set(published.heads) == {"projectors.0."}
    assert all(torch.equal(published.ema[key], raw["ema"][key]) for key in raw["ema"])
    with pytest.raises(HasteError, match="unknown reference layout"):
        export_reference(run_dir, tmp_path / "x.pt", "sd3")
    with pytest.raises(HasteError, match=r"\.pt file"):
        export_reference(run_dir, tmp_path / "x.safetensors", "repa")


@pytest.mark.slow
def test_mmdit_run_exports_to_the_reference_layout_and_imports_back(plugins, tmp_path):
    assert run.main([str(T2I_RECIPE), f"run.output_dir={tmp_path}", "run.max_steps=2", "run.checkpoint_every=2",
                     "student.pooled=false", "student.attend_padding=true"]) == 0  # fmt: skip
    run_dir = tmp_path / "tiny_t2i"
    raw = checkpoint.load(checkpoint.latest_path(run_dir))
    data_plugin = raw["recipe"]["plugins"]  # the text data set is a local plugin: named by the user, as --plugin does
    repa = torch.load(export_reference(run_dir, tmp_path / "repa.pt", "repa", data_plugin), weights_only=True)
    assert any(key.startswith("joint_blocks.3.x_block.attn.qkv.") for key in repa["ema"])
    assert not any(key.startswith(("blocks.", "null_text", "y_embedder.")) for key in repa["ema"])
    entry = plugins.registry("students").get("mmdit_d4")
    data = DataSpec(**{**TEXT.__dict__, **_t2i_shapes(raw)})
    fresh = build_student(entry, entry.cls.Config(pooled=False, attend_padding=True), data)
    published = read_checkpoint(tmp_path / "repa.pt", ["projectors.0."])
    assert set(published.heads) == {"projectors.0."}  # REPA's projector beside the backbone, as the reference keeps it
    import_checkpoint(published, fresh, supply={"null_text": raw["ema"]["null_text"]})
    state = fresh.state_dict()
    assert state.keys() == raw["ema"].keys() and all(torch.equal(state[k], raw["ema"][k]) for k in state)


def _t2i_shapes(raw: dict) -> dict:
    """The data shapes of the tiny text-to-image run, read off its checkpoint."""
    ema = raw["ema"]
    channels = ema["x_embedder.proj.weight"].shape[1]
    side = int(ema["pos_embed"].shape[1] ** 0.5) * 2
    text_len, text_dim = ema["null_text"].shape
    return {"x_shape": (channels, side, side), "text_len": text_len, "text_dim": text_dim, "pooled_dim": 0}
