"""Pretrained-ViT teachers (DINOv2, CLIP, MAE): attention capture, block counting, preprocessing, weights, offline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from haste_alignment.attention import AttentionDistillation
from haste_alignment.repa import REPA

from haste_core.errors import RecipeError
from haste_core.interfaces import DataSpec, StudentSpec
from haste_core.testing import build_teacher

PUBLISHED_PARAMS = {  # millions, as the papers and model cards give them; tolerance as a fraction
    "dinov2_vits14": (21, 0.05), "dinov2_vitb14": (86, 0.01), "dinov2_vitl14": (300, 0.02),
    "dinov2_vitg14": (1100, 0.05), "dinov2_vits14_reg": (21, 0.05), "dinov2_vitb14_reg": (86, 0.01),
    "dinov2_vitl14_reg": (300, 0.02), "dinov2_vitg14_reg": (1100, 0.05),
    "mae_vitb16": (86, 0.01), "mae_vitl16": (304, 0.01), "mae_vith14": (632, 0.01),
    "clip_vitb16": (86, 0.01), "clip_vitl14": (304, 0.01),
}  # fmt: skip
ARCH = {  # depth, width, heads, prefix tokens (class + registers)
    "dinov2_vitg14": (40, 1536, 24, 1), "dinov2_vitg14_reg": (40, 1536, 24, 5), "dinov2_vitl14": (24, 1024, 16, 1),
    "mae_vith14": (32, 1280, 16, 1), "clip_vitl14": (24, 1024, 16, 1), "dinov2_vitb14": (12, 768, 12, 1),
}  # fmt: skip
SMALL = ["dinov2_vits14", "dinov2_vits14_reg", "clip_vitb16", "mae_vitb16"]  # one real build per family
DATA_32 = DataSpec(x_shape=(4, 4, 4), image_shape=(3, 32, 32), num_classes=10, num_items=8)


def student(grid: int) -> StudentSpec:
    return StudentSpec(name="sit_test", depth=4, hidden_size=64, num_heads=4, grid=grid)


def build(plugins, name: str, *, grid: int = 4, data: DataSpec = DATA_32, resolve=None, **settings):
    entry = plugins.registry("teachers").get(name)
    config = entry.cls.Config(**{"weights": "none", **settings})
    return build_teacher(entry, config, data, student(grid), resolve_weights=resolve)


def images(batch: int = 2, side: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def small(plugins):
    torch.manual_seed(0)
    return {name: build(plugins, name) for name in SMALL}


# --- architecture -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_the_published_models(plugins, name):
    with torch.device("meta"):
        teacher = build(plugins, name, grid=16, data=DataSpec((4, 32, 32), (3, 256, 256), 1000, 8))
    millions = sum(p.numel() for p in teacher.parameters()) / 1e6
    published, tolerance = PUBLISHED_PARAMS[name]
    assert abs(millions - published) <= tolerance * published, f"{name}: {millions:.1f}M vs {published}M"
    if name in ARCH:
        assert (teacher.depth, teacher.embed_dim, teacher.num_heads, teacher.prefix_tokens) == ARCH[name]
    assert teacher.grid == 16 and teacher.input_side == 16 * (14 if "14" in name else 16)


# --- encode -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_softmax_of_returned_logits_is_the_attention_the_module_applied(small, name):
    teacher = small[name]
    every = frozenset(range(teacher.depth))
    applied, handles = {}, []
    if name.startswith("clip"):
        # nn.MultiheadAttention returns the weights it applied when asked; ask it with the input it got
        for index, block in enumerate(teacher.blocks()):

            def grab(module, args, kwargs, output, index=index):
                x = args[0]  # forward() itself, not the module call: that would run this hook again
                _, weights = module.forward(x, x, x, need_weights=True, average_attn_weights=False)
                applied[index] = weights

            handles.append(block.attn.register_forward_hook(grab, with_kwargs=True))
    else:
        for index, block in enumerate(teacher.blocks()):
            assert block.attn.fused_attn, f"{name}: block {index} does not use fused attention"
            block.attn.fused_attn = False  # timm's explicit path: its softmax goes through attn_drop

            def grab(module, args, index=index):
                applied[index] = args[0]

            handles.append(block.attn.attn_drop.register_forward_pre_hook(grab))
    try:
        out = teacher.encode(images(), frozenset({-1}), every)
    finally:
        for handle in handles:
            handle.remove()
        for block in teacher.blocks():
            if hasattr(block.attn, "fused_attn"):
                block.attn.fused_attn = True
    fused = teacher.encode(images(), frozenset({-1}), frozenset())
    assert torch.allclose(out.tokens[-1], fused.tokens[-1], atol=1e-5)  # same network either way
    first, patches = teacher.prefix_tokens, teacher.grid**2
    for index in every:
        logits = out.attn_logits[index]
        assert logits.shape == (2, teacher.num_heads, patches, patches)
        over_patches = applied[index][:, :, first:, first:]
        over_patches = over_patches / over_patches.sum(-1, keepdim=True)  # consumers renormalise over patch keys
        torch.testing.assert_close(logits.softmax(-1), over_patches.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_only_the_needed_blocks_run(plugins, small, name):
    """Counted with hooks on every block; the big sizes run on the meta device (no memory, no arithmetic)."""
    if name in small:
        teacher, device = small[name], "cpu"
    else:
        with torch.device("meta"):
            teacher, device = build(plugins, name), "meta"
    ran: list[int] = []
    norms: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(teacher.blocks())]
    handles.append(teacher.final_norm().register_forward_hook(lambda m, a, o: norms.append(1)))
    try:
        out = teacher.encode(images().to(device), frozenset({2}), frozenset({4}))
        assert ran == [0, 1, 2, 3, 4] and not norms
        assert set(out.tokens) == {2} and set(out.attn_logits) == {4}
        ran.clear()
        out = teacher.encode(images().to(device), frozenset({-1, 1}), frozenset({3, 9}))
        assert ran == list(range(teacher.depth)) and norms == [1]
        assert set(out.tokens) == {-1, 1} and set(out.attn_logits) == {3, 9}
        ran.clear()
        assert teacher.encode(images().to(device), frozenset(), frozenset()).tokens == {} and ran == []
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", SMALL)
def test_tokens_are_the_library_forward_without_class_and_register_tokens(small, name):
    teacher = small[name]
    pixels = teacher.preprocess(images())
    with torch.no_grad():
        if name.startswith("clip"):
            visual = teacher.backbone
            full = visual.ln_post(visual.transformer(visual._embeds(pixels)))
        else:
            full = teacher.backbone.forward_features(pixels)
    out = teacher.encode(images(), frozenset({-1}), frozenset())
    assert full.shape[1] == teacher.prefix_tokens + teacher.grid**2
    torch.testing.assert_close(out.tokens[-1], full[:, teacher.prefix_tokens :], atol=1e-5, rtol=0)


def test_teacher_stays_frozen_and_gives_no_gradients(small):
    teacher = small["dinov2_vits14"]
    teacher.train()
    assert not teacher.training and not teacher.backbone.training
    with torch.enable_grad():
        out = teacher.encode(images(), frozenset({0, -1}), frozenset({0}))
    assert not any(t.requires_grad for t in [*out.tokens.values(), *out.attn_logits.values()])
    with pytest.raises(ValueError, match=r"has blocks 0..11 \(and -1 for final tokens\); asked for \[12\]"):
        teacher.encode(images(), frozenset({12}), frozenset())


# --- preprocessing and grids -------------------------------------------------------------------------------------


def test_preprocessing_matches_the_reference_resize(plugins):
    data = DataSpec(x_shape=(4, 32, 32), image_shape=(3, 256, 256), num_classes=1000, num_items=8)
    with torch.device("meta"):  # only the preprocessing runs: no weights needed
        dino = build(plugins, "dinov2_vitb14", grid=16, data=data)
        smooth = build(plugins, "dinov2_vitb14", grid=16, data=data, antialias=True)
        mae = build(plugins, "mae_vitb16", grid=16, data=data)
        dino_512 = build(plugins, "dinov2_vitb14", grid=32, data=DataSpec((4, 64, 64), (3, 512, 512), 1000, 8))
    assert (dino.input_side, mae.input_side, dino_512.input_side) == (224, 256, 448)
    for teacher in (dino, smooth, mae):
        teacher.to_empty(device="cpu")
        teacher.mean.copy_(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))  # ImageNet (DINOv2, MAE)
        teacher.std.copy_(torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    batch = images(side=256)
    normalised = (batch.float() / 255 - dino.mean) / dino.std
    want = F.interpolate(normalised, size=(224, 224), mode="bicubic", align_corners=False, antialias=False)
    torch.testing.assert_close(dino.preprocess(batch), want)
    assert not torch.allclose(smooth.preprocess(batch), want, atol=1e-3)  # antialias: true is another resize
    torch.testing.assert_close(mae.preprocess(batch), normalised)  # /16 at 256 px: no resize at all


def test_tokens_resample_to_the_student_grid_and_attention_pairs_must_match(plugins):
    teacher = build(plugins, "dinov2_vits14", grid=2, image_size=56)  # runs at 4×4, returns 2×2 tokens
    spec = type(teacher).describe(teacher.config, data=DATA_32, student=student(2), **teacher.fixed)
    assert (spec.grid, spec.token_grid) == (4, 2)
    out = teacher.encode(images(), frozenset({-1, 3}), frozenset({3}))
    assert out.tokens[-1].shape == (2, 4, 384) and out.attn_logits[3].shape == (2, 6, 16, 16)
    native = teacher.final_norm()(teacher.intermediates(teacher.preprocess(images()), [11])[0])
    pooled = native.reshape(2, 2, 2, 2, 2, 384).mean(dim=(2, 4)).reshape(2, 4, 384)  # 2×2 patches averaged
    torch.testing.assert_close(out.tokens[-1], pooled, atol=1e-5, rtol=0)
    REPA.check(REPA.Config(student_block=1, teacher_block=-1), student=student(2), teacher=spec)
    with pytest.raises(RecipeError, match="attention maps cannot be compared across token grids"):
        config = AttentionDistillation.Config(pairs=((1, 8),), heads="learned")
        AttentionDistillation.check(config, student=student(2), teacher=spec)
    with pytest.raises(RecipeError, match="image_size: 60 px is not a multiple of dinov2_vits14's patch size 14"):
        build(plugins, "dinov2_vits14", image_size=60)
    with pytest.raises(RecipeError, match="reads RGB images; the data gives 1 channels"):
        build(plugins, "dinov2_vits14", data=DataSpec((1, 8, 8), (1, 8, 8), 10, 8))


# --- several teachers in one run ----------------------------------------------------------------------------------


def test_each_teacher_encodes_once_per_step_for_all_alignments_that_use_it(tmp_path, plugins, monkeypatch):
    """Features from one teacher (two REPA terms), attention maps from another: two encodes per step."""
    from haste_teachers.digits_vit import DigitsViT

    from haste_core import distributed
    from haste_core.config.recipe import load_recipe
    from haste_core.train import run_folder
    from haste_core.train.trainer import Trainer
    from tests.conftest import TINY_RECIPE

    raw = yaml.safe_load(TINY_RECIPE.read_text())
    raw.pop("teacher")
    raw["teachers"] = {"features": {"name": "digits_vit", "weights": "none"}, "maps": {"name": "digits_vit",
                                                                                        "weights": "none"}}  # fmt: skip
    raw["alignment"] = [
        {"name": "repa", "teacher": "features", "student_block": 1, "teacher_block": -1, "projector_dim": 32},
        {"name": "repa", "teacher": "features", "student_block": 2, "teacher_block": 1, "projector_dim": 32},
        {"name": "attention", "teacher": "maps", "pairs": [[1, 2], [2, 3]]},
    ]
    raw["run"].update(output_dir=str(tmp_path), max_steps=2)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    recipe, _ = load_recipe(tmp_path / "two.yaml")
    calls: list[tuple[int, frozenset, frozenset, int]] = []
    original = DigitsViT.encode

    def counting(self, images, blocks, attn_blocks):
        calls.append((id(self), blocks, attn_blocks, images.shape[0]))
        return original(self, images, blocks, attn_blocks)

    monkeypatch.setattr(DigitsViT, "encode", counting)
    run_folder.write_recipe(recipe)
    cpu = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(recipe, plugins, cpu, resume_from=None)
    features, maps = id(trainer.stage.teachers["features"]), id(trainer.stage.teachers["maps"])
    trainer.train_step()
    trainer.train_step()
    per_rank = recipe.data.global_batch_size  # one process
    step = [(features, frozenset({-1, 1}), frozenset(), per_rank), (maps, frozenset(), frozenset({2, 3}), per_rank)]
    # the phase's FLOP count (before the first step only, on one sample) encodes once more per teacher
    flop_count = [(features, frozenset({-1, 1}), frozenset(), 1), (maps, frozenset(), frozenset({2, 3}), 1)]
    picture = [(maps, frozenset(), frozenset({2, 3}), 1)]  # the last step's attention picture: the maps teacher only
    assert calls == flop_count + step + step + picture


def test_the_docs_example_runs_and_prints_what_it_says(capsys):
    import re

    from tests.conftest import REPO

    page = (REPO / "docs" / "teachers.md").read_text()
    (source,) = [block for block in re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL) if "encode" in block]
    exec(compile(source, "docs/teachers.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed == source.strip().splitlines()[-1].lstrip("# ")


def test_clip_tower_comes_from_open_clip_public_api_and_a_changed_api_fails_clearly(plugins, monkeypatch):
    import open_clip
    from open_clip.transformer import QuickGELU, VisionTransformer

    from haste_core.errors import HasteError

    with torch.device("meta"):
        openai = build(plugins, "clip_vitb16")
        laion = build(plugins, "clip_vitb16", pretrained="laion2b_s34b_b88k")
    assert isinstance(openai.backbone, VisionTransformer) and not hasattr(openai.backbone, "token_embedding")
    assert isinstance(openai.blocks()[0].mlp.gelu, QuickGELU)  # OpenAI's weights were trained with QuickGELU
    assert not isinstance(laion.blocks()[0].mlp.gelu, QuickGELU)
    assert openai.backbone.positional_embedding.shape == (1 + 4 * 4, 768)  # built for 64 px: 4×4 patches

    class TextOnly(torch.nn.Module):
        pass

    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: TextOnly())
    with pytest.raises(HasteError, match=r"open_clip .* builds ViT-L-14 without the image tower API the CLIP teacher "
                       r"uses \(transformer, ln_post, .* missing; written for open_clip 3.3.0\): install"):  # fmt: skip
        build(plugins, "clip_vitl14")


def test_a_timm_attention_without_the_hooked_modules_fails_clearly(plugins):
    from haste_core.errors import HasteError

    teacher = build(plugins, "dinov2_vits14")
    attn = teacher.blocks()[3].attn
    q_norm = attn.q_norm
    del attn.q_norm  # what a timm release that renamed it would look like
    try:
        with pytest.raises(HasteError, match=r"timm .*'s Attention has no q_norm, which the attention capture of "
                           r"dinov2_vits14 hooks \(written for timm 1.0.31\)"):  # fmt: skip
            teacher.encode(images(), frozenset(), frozenset({3}))
    finally:
        attn.q_norm = q_norm
