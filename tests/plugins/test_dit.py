"""DiT: published sizes with learned sigma, the DDPM time scale, and QK-norm in both attention paths."""

from __future__ import annotations

import pytest
import torch
from haste_students.dit import DiT

from haste_core.interfaces import Capture, DataSpec
from haste_core.testing import _scramble, build_student

IMAGENET_LATENTS = DataSpec(x_shape=(4, 32, 32), image_shape=(3, 256, 256), num_classes=1000, num_items=1_281_167)
SMALL = DataSpec(x_shape=(3, 8, 8), image_shape=(3, 8, 8), num_classes=5, num_items=10)


def build(plugins, name: str, data: DataSpec = SMALL, **config):
    entry = plugins.registry("students").get(name)
    return build_student(entry, entry.cls.Config(**config), data)


@pytest.mark.parametrize(
    ("name", "millions"),
    [("dit_s_2", 33.0), ("dit_b_2", 130.0), ("dit_l_2", 458.0), ("dit_xl_2", 675.0), ("sit_xl_2", 675.0)],
)  # DiT paper Table 1 (S 33M, B 130M, L 458M, XL 675M); SiT has the same backbone
def test_parameter_counts_match_the_papers(name, millions, plugins):
    with torch.device("meta"):
        model = build(plugins, name, IMAGENET_LATENTS)
    count = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()  # DiT's table is a Parameter
    assert count / 1e6 == pytest.approx(millions, rel=0.005)


def test_every_published_size_has_learned_sigma_channels(plugins):
    names = [n for n in plugins.registry("students").names() if n.startswith("dit_")]
    published = [n for n in names if n.split("_")[1] in {"s", "b", "l", "xl"}]
    assert len(published) == 12 and len(names) == 18
    for name in published:
        with torch.device("meta"):
            model = build(plugins, name, IMAGENET_LATENTS)
        patch = int(name.rsplit("_", 1)[1])
        assert isinstance(model, DiT) and model.learn_sigma and model.grid == 32 // patch
        assert model.final_layer.linear.out_features == patch * patch * 8  # p²·2C for C = 4 latent channels


def test_dit_is_sit_with_the_ddpm_time_scale(plugins):
    torch.manual_seed(0)
    dit = build(plugins, "dit_micro_2", learn_sigma=False).eval()
    sit = build(plugins, "sit_micro_2").eval()
    _scramble(dit, std=0.1)
    sit.load_state_dict(dit.state_dict())
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([0.25, 1.0]), torch.tensor([1, 5])
    with torch.no_grad():
        assert torch.allclose(dit(x, t, y).pred, sit(x, t * 999, y).pred, atol=1e-6)
        sigma = build(plugins, "dit_micro_2").eval()(x, t, y).pred
    assert sigma.shape == (2, 6, 8, 8) and not sigma.any()  # adaLN-Zero: ε and sigma values start at 0


@pytest.mark.parametrize("name", ["sit_micro_2", "dit_micro_2"])
def test_qk_norm_acts_in_fused_and_captured_paths(name, plugins):
    torch.manual_seed(0)
    model = build(plugins, name, qk_norm=True).eval()
    _scramble(model, std=0.1)
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 3])
    every = Capture(attn=frozenset(range(model.depth)))
    with torch.no_grad():
        before = model(x, t, y).pred
        model.blocks[1].attn.k_norm.weight.mul_(4.0)
        fused, captured = model(x, t, y).pred, model(x, t, y, capture=every).pred
    assert not torch.allclose(before, fused, atol=1e-4)
    assert torch.allclose(fused, captured, atol=1e-5)


def test_flow_refuses_learned_sigma_predictions_with_a_hint():
    from haste_objectives.flow import Flow

    from haste_core.errors import HasteError

    objective = Flow(Flow.Config())
    pair = objective.training_pair(torch.zeros(2, 4, 4, 4))
    with pytest.raises(HasteError, match="needs objective ddpm"):
        objective.loss(torch.zeros(2, 8, 4, 4), pair)


def test_sample_grid_conditions_default_to_class_ids(plugins):
    entry = plugins.registry("datasets").get("digits")
    dataset = entry.build(entry.cls.Config(), split="heldout")
    assert torch.equal(dataset.sample_conds(12), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))


def test_captured_logits_are_the_attention_the_dit_block_applied(plugins):
    torch.manual_seed(0)
    model = build(plugins, "dit_micro_2").eval()
    _scramble(model, std=0.1)
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 3])
    seen = {}
    attn = model.blocks[3].attn
    attn.register_forward_hook(lambda module, args, out: seen.update(x=args[0], out=out[0]))
    with torch.no_grad():
        plain = model(x, t, y).pred
        fused_out = seen["out"]
        out = model(x, t, y, capture=Capture(attn=frozenset({3})))
        B, N, D = seen["x"].shape
        _, _, v = attn.qkv(seen["x"]).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        applied = attn.proj((out.attn_logits[3].softmax(-1) @ v).transpose(1, 2).reshape(B, N, D))
    assert torch.allclose(applied, seen["out"], atol=1e-6) and torch.allclose(seen["out"], fused_out, atol=1e-5)
    assert torch.allclose(out.pred, plain, atol=1e-5) and out.pred.shape == (2, 6, 8, 8)
