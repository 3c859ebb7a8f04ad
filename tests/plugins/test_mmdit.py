"""MMDiT: joint attention with a padding mask, captured image-image logits, learned null caption, training."""

from __future__ import annotations

import pytest
import torch
from haste_students.mmdit import MMDiT, MMDiTArch

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.errors import RecipeError
from haste_core.eval.samplers import euler_sample
from haste_core.interfaces import Capture, DataSpec
from haste_core.ops import attention_logits
from haste_core.testing import _scramble, example_cond
from haste_core.train.trainer import Trainer
from tests.conftest import REPO

TEXT = DataSpec(x_shape=(4, 8, 8), image_shape=(3, 8, 8), num_classes=0, num_items=8, text_len=6, text_dim=10,
                pooled_dim=5)  # fmt: skip
T2I_RECIPE = REPO / "tests" / "fixtures" / "tiny_t2i.yaml"


def mmdit(config: MMDiT.Config, arch: MMDiTArch, data: DataSpec) -> MMDiT:
    return MMDiT(config, arch=arch, data=data, spec=MMDiT.describe(config, data=data, arch=arch))


def tiny_mmdit(depth: int = 2, **settings) -> MMDiT:
    torch.manual_seed(0)
    model = mmdit(MMDiT.Config(**settings), MMDiTArch(depth=depth), TEXT)
    _scramble(model, std=0.1)
    return model.eval()


def inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *TEXT.x_shape, generator=generator)
    return x, torch.rand(batch, generator=generator), example_cond(TEXT, batch, generator)


def test_sizes_follow_the_reference_rule_and_d24_has_its_parameter_count():
    d24 = DataSpec(x_shape=(4, 32, 32), image_shape=(3, 256, 256), num_classes=0, num_items=1, text_len=77,
                   text_dim=768)  # fmt: skip
    with torch.device("meta"):
        model = mmdit(MMDiT.Config(), MMDiTArch(depth=24), d24)
    assert (model.hidden_size, model.num_heads, model.grid) == (768, 24, 16)
    count = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()
    assert abs(count - 505.3e6) / 505.3e6 < 0.005  # ≈505 M without the projector
    assert not hasattr(model.blocks[-1].context, "mlp")  # last block: the text stream is pre-only


@pytest.mark.parametrize("qk_norm", [False, True])
def test_captured_logits_are_the_image_block_of_the_joint_attention_the_block_applied(qk_norm):
    model = tiny_mmdit(qk_norm=qk_norm)
    x, t, cond = inputs()
    seen = {}
    block = model.blocks[1]
    block.register_forward_hook(lambda module, args, output: seen.update(args=args, output=output))
    with torch.no_grad():
        plain = model(x, t, cond).pred
        fused_img = seen["output"][1]
        out = model(x, t, cond, capture=Capture(hidden=frozenset({1}), attn=frozenset({0, 1})))
        txt, img, c, keep = seen["args"]
        q_t, k_t, v_t, _ = block.context.pre(txt, c)
        q_i, k_i, v_i, mods = block.image.pre(img, c)
        logits = attention_logits(torch.cat([q_t, q_i], 2), torch.cat([k_t, k_i], 2), block.scale)
        applied = logits.masked_fill(~keep, float("-inf")).softmax(-1)  # the joint softmax over text + image keys
        length = txt.shape[1]
        assert torch.allclose(out.attn_logits[1], logits[:, :, length:, length:])
        image_block = applied[:, :, length:, length:]
        renormalised = image_block / image_block.sum(-1, keepdim=True)
        assert torch.allclose(out.attn_logits[1].softmax(-1), renormalised, atol=1e-6)
        expected = block.image.post(img, (applied @ torch.cat([v_t, v_i], 2))[:, :, length:], mods)
    assert torch.allclose(seen["output"][1], expected, atol=1e-6)
    assert torch.allclose(seen["output"][1], fused_img, atol=1e-5)
    assert torch.allclose(out.pred, plain, atol=1e-5)
    assert out.hidden[1].shape == (3, model.grid**2, model.hidden_size) and set(out.attn_logits) == {0, 1}
    if qk_norm:  # the norm acts in both paths
        with torch.no_grad():
            block.image.q_norm.weight.mul_(3.0)
            changed, changed_captured = (
                model(x, t, cond).pred,
                model(x, t, cond, capture=Capture(attn=frozenset({1}))).pred,
            )
        assert not torch.allclose(changed, plain) and torch.allclose(changed, changed_captured, atol=1e-5)


def test_padded_caption_tokens_do_not_matter():
    model = tiny_mmdit()
    x, t, cond = inputs()
    padded = ~cond["text_mask"]
    assert padded.any()
    other = dict(cond, text=torch.where(padded[..., None], torch.randn_like(cond["text"]) * 10, cond["text"]))
    with torch.no_grad():
        assert torch.allclose(model(x, t, cond).pred, model(x, t, other).pred, atol=1e-6)
        other["text"][~padded] += 1.0  # real tokens do matter
        assert not torch.allclose(model(x, t, cond).pred, model(x, t, other).pred, atol=1e-4)


def test_learned_null_caption_drives_dropout_and_guidance():
    model = tiny_mmdit(caption_dropout_prob=0.5)
    x, t, cond = inputs(batch=2)
    null = model.null_cond(cond)
    assert torch.equal(null["text"][1], model.null_text) and null["text_mask"].all()
    assert torch.equal(null["pooled"][0], model.null_pooled)
    big = {key: value.repeat(500, *[1] * (value.dim() - 1)) for key, value in cond.items()}
    torch.manual_seed(0)
    dropped = model._drop_captions(big)
    is_null = (dropped["text"] == model.null_text).flatten(1).all(1)
    assert 0.45 < is_null.float().mean().item() < 0.55
    assert torch.equal(dropped["pooled"][is_null], model.null_pooled.expand(int(is_null.sum()), -1))
    many = {key: value[:200] for key, value in big.items()}
    xs, ts = x.repeat(100, 1, 1, 1), t.repeat(100)
    with torch.no_grad():
        model.train()  # dropout only in training: each sample is conditional or exactly the null-caption one
        trained = model(xs, ts, many).pred
        model.eval()
        conditional, unconditional = model(xs, ts, many).pred, model(xs, ts, model.null_cond(many)).pred
    as_null = (trained - unconditional).flatten(1).abs().amax(1) < 1e-5
    as_cond = (trained - conditional).flatten(1).abs().amax(1) < 1e-5
    assert (as_null ^ as_cond).all() and 0.35 < as_null.float().mean().item() < 0.65
    from haste_objectives.flow import Flow

    objective = Flow(Flow.Config())
    guided = euler_sample(model, objective, x, cond, steps=2, cfg_scale=3.0)
    plain = euler_sample(model, objective, x, cond, steps=2)
    assert guided.shape == x.shape and not torch.allclose(guided, plain)


def test_mmdit_needs_text_and_class_students_refuse_text(plugins):
    classes = DataSpec(x_shape=(4, 8, 8), image_shape=(3, 8, 8), num_classes=10, num_items=8)
    with pytest.raises(RecipeError, match="mmdit is text-conditioned"):
        MMDiT.describe(MMDiT.Config(), data=classes, arch=MMDiTArch(depth=2))
    sit = plugins.registry("students").get("sit_micro_2")
    with pytest.raises(RecipeError, match="use an mmdit_"):
        sit.cls.describe(sit.cls.Config(), data=TEXT, **sit.fixed)


def test_tiny_mmdit_trains_on_captions_with_both_alignments_and_samples(tmp_path, monkeypatch):
    recipe, plugins = load_recipe(T2I_RECIPE, [f"run.output_dir={tmp_path}"])
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    trainer = Trainer(recipe, plugins, env)
    assert set(trainer.stage.alignments) == {"repa", "attention"}
    assert trainer.module.capture == Capture(hidden=frozenset({1}), attn=frozenset({1, 2}))
    logged = []
    monkeypatch.setattr(trainer.plugins, "step_end", lambda run, step, metrics: logged.append(metrics))
    trainer.fit()
    assert len(logged) == recipe.run.max_steps
    for metrics in logged[:4]:  # Phase I: both alignments active and finite
        assert {"align/repa", "align/attention"} <= set(metrics)
        assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith(("loss/", "align/")))
    assert "align/repa" not in logged[-1] and logged[-1]["align/active"] == 0.0
    assert not trainer.stage.alignments and not trainer.stage.teachers  # terminated at step 4
    assert (recipe.run_dir / "samples" / "step_00000006.png").is_file()  # the last step drew a grid
