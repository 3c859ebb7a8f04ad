"""Published checkpoint layouts (REPA/HASTE training checkpoints, official DiT) load exactly; export writes EMA."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import load_file

from haste_core import distributed
from haste_core.errors import CheckpointError, RecipeError
from haste_core.interfaces import DataSpec, StudentSpec, TeacherSpec
from haste_core.testing import _scramble, build_student
from haste_core.train import run_folder
from haste_core.train.trainer import Trainer
from haste_core.weights.import_checkpoint import import_checkpoint, load_weights, read_checkpoint, split_heads
from tests.conftest import run_module

DIGITS = DataSpec(x_shape=(1, 8, 8), image_shape=(1, 8, 8), num_classes=10, num_items=100)
CPU = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def repa_backbone_keys(depth: int, learn_sigma: bool = False) -> set[str]:
    """The key names of a REPA/HASTE SiT or official DiT state dict, written out from the issue's list."""
    keys = {"x_embedder.proj.weight", "x_embedder.proj.bias", "y_embedder.embedding_table.weight", "pos_embed"}
    keys |= {f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    keys |= {f"final_layer.{m}.{w}" for m in ("linear", "adaLN_modulation.1") for w in ("weight", "bias")}
    for i in range(depth):
        for module in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            keys |= {f"blocks.{i}.{module}.weight", f"blocks.{i}.{module}.bias"}
    return keys


def build(plugins, name: str, seed: int):
    entry = plugins.registry("students").get(name)
    student = build_student(entry, entry.cls.Config(), DIGITS)
    torch.manual_seed(seed)
    _scramble(student)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(torch.randn_like(param) * 0.01 * seed)  # different seeds, different weights
    return student.eval()


def projector_state(seed: int, student_width: int = 64, width: int = 32, teacher_width: int = 64) -> dict:
    generator = torch.Generator().manual_seed(seed)
    shapes = {0: (width, student_width), 2: (width, width), 4: (teacher_width, width)}
    state = {}
    for index, shape in shapes.items():
        state[f"projectors.0.{index}.weight"] = torch.randn(shape, generator=generator)
        state[f"projectors.0.{index}.bias"] = torch.randn(shape[0], generator=generator)
    return state


def write_repa_checkpoint(path, live, ema) -> dict:
    """What REPA's and HASTE's train.py save: model, ema (each with the projector), opt, args, steps."""
    args = argparse.Namespace(model="SiT-micro/2", encoder_depth=2, projector_embed_dims="64", cfg_prob=0.1)
    checkpoint = {
        "model": {**live.state_dict(), **projector_state(1)},
        "ema": {**ema.state_dict(), **projector_state(2)},
        "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "args": args,
        "steps": 400_000,
    }
    assert set(checkpoint["model"]) == repa_backbone_keys(live.depth) | set(projector_state(1))
    torch.save(checkpoint, path)
    return checkpoint


def outputs(student, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *DIGITS.x_shape, generator=generator)
    t = torch.rand(3, generator=generator)
    with torch.no_grad():
        return student(x, t, torch.tensor([0, 3, 10])).pred  # 10: the null class


def test_repa_checkpoint_loads_ema_and_projector_exactly(tmp_path, plugins):
    live, ema = build(plugins, "sit_micro_2", 1), build(plugins, "sit_micro_2", 2)
    saved = write_repa_checkpoint(tmp_path / "repa.pt", live, ema)
    fresh = build(plugins, "sit_micro_2", 3)
    repa = plugins.registry("alignments").get("repa")
    alignment = repa.build(
        repa.cls.Config(student_block=1, projector_dim=32),
        student=StudentSpec(name="sit_micro_2", depth=4, hidden_size=64, num_heads=4, grid=4),
        teacher=TeacherSpec(name="digits_vit", depth=4, embed_dim=64, num_heads=4, grid=4),
    )
    read = import_checkpoint(tmp_path / "repa.pt", fresh, alignments={"repa": alignment})
    assert read.layout == "repa"
    assert torch.equal(outputs(fresh), outputs(ema)) and not torch.equal(outputs(fresh), outputs(live))
    assert torch.equal(alignment.projector[4].weight, saved["ema"]["projectors.0.4.weight"])
    import_checkpoint(read, fresh, weights="model")
    assert torch.equal(outputs(fresh), outputs(live))


def test_official_dit_state_dict_with_learned_sigma_loads_exactly(tmp_path, plugins):
    original = build(plugins, "dit_micro_2", 1)
    state = original.state_dict()
    assert set(state) == repa_backbone_keys(original.depth)
    assert state["final_layer.linear.weight"].shape == (2 * 2 * 2 * DIGITS.x_shape[0], 64)  # p²·2C: learned sigma
    torch.save(state, tmp_path / "DiT-micro-2.pt")
    fresh = build(plugins, "dit_micro_2", 2)
    assert import_checkpoint(tmp_path / "DiT-micro-2.pt", fresh).layout == "dit"
    pred = outputs(fresh)
    assert pred.shape[1] == 2 * DIGITS.x_shape[0] and torch.equal(pred, outputs(original))
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # pre-zip torch.save format
    import_checkpoint(tmp_path / "legacy.pt", other := build(plugins, "dit_micro_2", 3))
    assert torch.equal(outputs(other), outputs(original))


def published_shapes(depth: int, width: int, patch: int, out_channels: int) -> dict[str, tuple[int, ...]]:
    """Shapes of REPA's SiT / official DiT state dicts at 256 px (4×32×32 latents, 1000 classes + the null row),
    written out from their module definitions, independently of our code."""
    tokens, channels = (32 // patch) ** 2, 4
    linear = {"attn.qkv": (3 * width, width), "attn.proj": (width, width), "mlp.fc1": (4 * width, width),
              "mlp.fc2": (width, 4 * width), "adaLN_modulation.1": (6 * width, width)}  # fmt: skip
    shapes = {
        "x_embedder.proj.weight": (width, channels, patch, patch), "x_embedder.proj.bias": (width,),
        "pos_embed": (1, tokens, width), "y_embedder.embedding_table.weight": (1001, width),
        "t_embedder.mlp.0.weight": (width, 256), "t_embedder.mlp.0.bias": (width,),
        "t_embedder.mlp.2.weight": (width, width), "t_embedder.mlp.2.bias": (width,),
        "final_layer.linear.weight": (patch * patch * out_channels, width),
        "final_layer.linear.bias": (patch * patch * out_channels,),
        "final_layer.adaLN_modulation.1.weight": (2 * width, width),
        "final_layer.adaLN_modulation.1.bias": (2 * width,),
    }  # fmt: skip
    for i in range(depth):
        for module, (rows, cols) in linear.items():
            shapes[f"blocks.{i}.{module}.weight"], shapes[f"blocks.{i}.{module}.bias"] = (rows, cols), (rows,)
    assert set(shapes) == repa_backbone_keys(depth)
    return shapes


@pytest.mark.parametrize(("name", "out_channels"), [("sit_xl_2", 4), ("dit_xl_2", 8), ("sit_b_2", 4)])
def test_published_xl_and_b_checkpoints_fit_our_students_shape_for_shape(name, out_channels, plugins):
    """REPA/HASTE SiT (no learned sigma, 4 output channels) and official DiT (learned sigma, 8) at full size."""
    imagenet = DataSpec(x_shape=(4, 32, 32), image_shape=(3, 256, 256), num_classes=1000, num_items=1)
    entry = plugins.registry("students").get(name)
    with torch.device("meta"):
        student = build_student(entry, entry.cls.Config(), imagenet)
        shapes = published_shapes(student.depth, student.hidden_size, 2, out_channels)
        state = {key: torch.empty(shape) for key, shape in shapes.items()}
        load_weights(student, state, source="published", target=name)  # shapes checked key by key, then loaded
        repa = plugins.registry("alignments").get("repa")
        dinov2_b = TeacherSpec(name="dinov2_vitb14", depth=12, embed_dim=768, num_heads=12, grid=16)
        spec = StudentSpec(name=name, depth=student.depth, hidden_size=student.hidden_size, num_heads=16, grid=16)
        alignment = repa.build(repa.cls.Config(student_block=7), student=spec, teacher=dinov2_b)
        width = student.hidden_size
        projector = {"projectors.0.0": (2048, width), "projectors.0.2": (2048, 2048), "projectors.0.4": (768, 2048)}
        repa_state = {f"{k}.weight": torch.empty(v) for k, v in projector.items()}
        repa_state |= {f"{k}.bias": torch.empty(v[0]) for k, v in projector.items()}
        _, heads = split_heads(repa_state, [repa.cls.published_prefix])
        load_weights(alignment, repa.cls.from_published(heads["projectors.0."]), source="published", target="repa")
    count = sum(torch.Size(shape).numel() for shape in shapes.values())
    assert count / 1e6 == pytest.approx({"sit_xl_2": 675.1, "dit_xl_2": 675.1, "sit_b_2": 130.5}[name], rel=0.002)


def test_mismatched_checkpoint_names_the_first_key_and_both_shapes(tmp_path, plugins):
    torch.save(build(plugins, "dit_micro_2", 1).state_dict(), tmp_path / "dit.pt")
    with pytest.raises(CheckpointError, match=r"'final_layer\.linear\.weight' has shape \(8, 64\) in the checkpoint "
                       r"but \(4, 64\) in sit_micro_2"):  # fmt: skip
        import_checkpoint(tmp_path / "dit.pt", build(plugins, "sit_micro_2", 1), name="sit_micro_2")
    with pytest.raises(CheckpointError, match=r"'pos_embed' has shape \(1, 16, 64\) in the checkpoint "
                       r"but \(1, 16, 128\) in DiT"):  # fmt: skip
        import_checkpoint(tmp_path / "dit.pt", build(plugins, "dit_tiny_2", 1))
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint haste can read"):
        read_checkpoint(tmp_path / "odd.pt")


def test_init_from_starts_student_ema_and_projector_from_a_repa_checkpoint(tmp_path, tiny, plugins):
    live, ema = build(plugins, "sit_micro_2", 1), build(plugins, "sit_micro_2", 2)
    saved = write_repa_checkpoint(tmp_path / "repa.pt", live, ema)
    trainer = Trainer(tiny(f"run.init_from={tmp_path / 'repa.pt'}", "run.max_steps=1"), plugins, CPU)
    assert torch.equal(outputs(trainer.student.eval()), outputs(live))
    assert torch.equal(outputs(trainer.ema.model), outputs(ema))
    projector = trainer.stage.alignments["repa"].projector
    assert torch.equal(projector[0].bias, saved["model"]["projectors.0.0.bias"])
    with pytest.raises(RecipeError, match=r"run\.init_from: checkpoint 'nope\.pt' does not exist"):
        run_folder.resume_source(tiny("run.init_from=nope.pt"))


def test_a_resumed_run_no_longer_needs_its_init_from_file(tmp_path, tiny, plugins):
    live = build(plugins, "sit_micro_2", 1)
    write_repa_checkpoint(tmp_path / "repa.pt", live, live)
    overrides = (f"run.init_from={tmp_path / 'repa.pt'}", "run.max_steps=1", "run.checkpoint_every=1")
    recipe = tiny(*overrides)
    assert run_folder.resume_source(recipe) is None  # fresh: the file is there
    run_folder.write_recipe(recipe)
    Trainer(recipe, plugins, CPU).fit()
    (tmp_path / "repa.pt").unlink()  # moved or deleted after the start
    resumed = tiny(*overrides[:1], "run.max_steps=2", "run.checkpoint_every=1")
    source = run_folder.resume_source(resumed)
    assert source == resumed.run_dir / "checkpoints" / "latest.pt"
    trainer = Trainer(resumed, plugins, CPU, resume_from=source)  # resumes without reading init_from
    assert trainer.step == 1


def test_haste_checkpoint_gives_each_alignment_the_state_of_its_label(tmp_path, plugins):
    from haste_core.weights.checkpoint import FORMAT

    student = build(plugins, "sit_micro_2", 1)
    first, second = ({k[len("projectors.0.") :]: v for k, v in projector_state(seed).items()} for seed in (1, 2))
    raw = {
        "format": FORMAT,
        "student": student.state_dict(),
        "ema": student.state_dict(),
        "alignments": {"attention": {}, "repa_1": {f"projector.{k}": v for k, v in first.items()},
                       "repa_2": {f"projector.{k}": v for k, v in second.items()}},
        "recipe": {"student": {"name": "sit_micro_2"},
                   "alignment": [{"name": "attention"}, {"name": "repa"}, {"name": "repa"}]},
    }  # fmt: skip
    torch.save(raw, tmp_path / "run.pt")
    read = read_checkpoint(tmp_path / "run.pt")
    assert read.layout == "haste" and read.student_name == "sit_micro_2"
    repa = plugins.registry("alignments").get("repa")
    alignment = repa.build(
        repa.cls.Config(student_block=1, projector_dim=32),
        student=StudentSpec(name="sit_micro_2", depth=4, hidden_size=64, num_heads=4, grid=4),
        teacher=TeacherSpec(name="digits_vit", depth=4, embed_dim=64, num_heads=4, grid=4),
    )
    import_checkpoint(read, build(plugins, "sit_micro_2", 2), alignments={"repa_2": alignment})
    assert torch.equal(alignment.projector[4].weight, second["4.weight"])


def test_export_writes_ema_weights_only(tmp_path, tiny, plugins):
    recipe = tiny("run.max_steps=2", "run.checkpoint_every=0")
    trainer = Trainer(recipe, plugins, CPU)
    trainer.fit()
    result = run_module("haste_core.cli", "export", str(recipe.run_dir), str(tmp_path / "student.safetensors"))
    assert result.returncode == 0, result.stderr
    exported = load_file(tmp_path / "student.safetensors")
    expected = trainer.ema.state_dict()
    assert set(exported) == set(expected) and all(torch.equal(exported[k], expected[k]) for k in expected)
    assert not any(k.startswith("projector") for k in exported)
    bad = run_module("haste_core.cli", "export", str(tmp_path / "missing"), str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
