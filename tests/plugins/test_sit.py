"""SiT: published sizes and parameter counts, initialisation, capture, attention logits, conditioning."""

from __future__ import annotations

import pytest
import torch
from haste_students.blocks import sincos_pos_embed, unpatchify
from haste_students.sit import SiT, SiTArch

from haste_core.interfaces import Capture, DataSpec
from haste_core.testing import build_student

IMAGENET_LATENTS = DataSpec(x_shape=(4, 32, 32), image_shape=(3, 256, 256), num_classes=1000, num_items=1_281_167)


def build(name: str, plugins, data: DataSpec = IMAGENET_LATENTS, **config):
    entry = plugins.registry("students").get(name)
    return build_student(entry, SiT.Config(**config), data)


@pytest.mark.parametrize(
    ("name", "millions"),
    [("sit_s_2", 33.0), ("sit_b_2", 130.5), ("sit_l_2", 458.1), ("sit_xl_2", 675.1)],
)
def test_parameter_counts_match_the_papers(name, millions, plugins):
    with torch.device("meta"):
        model = build(name, plugins)
    # the published counts include the fixed positional table, which we keep as a buffer
    count = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()
    assert count / 1e6 == pytest.approx(millions, rel=0.005)


def test_every_published_size_builds(plugins):
    names = [
        n
        for n in plugins.registry("students").names()
        if n.startswith("sit_") and n.split("_")[1] in {"s", "b", "l", "xl"}
    ]
    assert len(names) == 12
    for name in names:
        with torch.device("meta"):
            model = build(name, plugins)
        patch = int(name.rsplit("_", 1)[1])
        assert model.grid == 32 // patch
        assert model.final_layer.linear.out_features == patch * patch * 4  # width from the model (REPA's S bug)


def small(plugins, **config) -> SiT:
    data = DataSpec(x_shape=(3, 8, 8), image_shape=(3, 8, 8), num_classes=5, num_items=10)
    torch.manual_seed(0)
    return build("sit_micro_2", plugins, data=data, **config)


def inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 3, 8, 8, generator=generator),
        torch.rand(batch, generator=generator),
        torch.tensor([0, 4, 2]),
    )


def scramble(model: SiT) -> SiT:
    """Random weights everywhere, so that zero-initialised gates do not hide differences."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def test_output_is_zero_at_initialisation(plugins):
    model = small(plugins)
    x, t, y = inputs()
    assert torch.equal(model(x, t, y).pred, torch.zeros_like(x))
    for block in model.blocks:
        assert not block.adaLN_modulation[-1].weight.any() and not block.adaLN_modulation[-1].bias.any()


def test_capture_does_not_change_the_prediction(plugins):
    model = scramble(small(plugins)).eval()
    x, t, y = inputs()
    plain = model(x, t, y).pred
    captured = model(x, t, y, capture=Capture(hidden=frozenset({0, 3}), attn=frozenset({1, 2}))).pred
    assert torch.allclose(plain, captured, atol=1e-5)
    assert (plain - captured).abs().max() < 1e-5


def test_captured_logits_are_the_attention_the_block_applied(plugins):
    model = scramble(small(plugins)).eval()
    x, t, y = inputs()
    seen = {}
    attn = model.blocks[2].attn
    attn.register_forward_hook(lambda module, args, kwargs_out: seen.update(x=args[0], out=kwargs_out[0]))
    out = model(x, t, y, capture=Capture(attn=frozenset({2})))
    logits = out.attn_logits[2]
    B, N, D = seen["x"].shape
    _, _, v = attn.qkv(seen["x"]).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    applied = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D))
    assert torch.allclose(applied, seen["out"], atol=1e-6)
    assert logits.shape == (3, 4, 16, 16)


def test_hidden_capture_is_the_block_output(plugins):
    model = scramble(small(plugins)).eval()
    x, t, y = inputs()
    outputs = []
    model.blocks[1].register_forward_hook(lambda module, args, out: outputs.append(out[0]))
    captured = model(x, t, y, capture=Capture(hidden=frozenset({1})))
    assert torch.equal(captured.hidden[1], outputs[0])


def test_label_dropout_in_training_only(plugins):
    model = small(plugins, class_dropout_prob=0.5)
    labels = torch.zeros(4000, dtype=torch.long)
    torch.manual_seed(0)
    dropped = (model.y_embedder(labels) == model.y_embedder.embedding_table.weight[5]).all(-1).float().mean()
    assert 0.45 < dropped < 0.55
    model.eval()
    assert not (model.y_embedder(labels) == model.y_embedder.embedding_table.weight[5]).all(-1).any()
    assert torch.equal(model.null_cond(torch.tensor([1, 2])), torch.tensor([5, 5]))


def test_qk_norm_adds_per_head_norms(plugins):
    model = small(plugins, qk_norm=True)
    assert model.blocks[0].attn.q_norm.normalized_shape == (16,)
    assert model.blocks[0].attn.k_norm.eps == 1e-5  # REPA's timm Attention: nn.LayerNorm's default eps
    assert "blocks.0.attn.k_norm.weight" in model.state_dict()


def test_sincos_table_encodes_column_then_row():
    table = sincos_pos_embed(8, 3).reshape(3, 3, 8)
    assert torch.equal(table[0, 1, :4], table[2, 1, :4])  # same column, same first half
    assert torch.equal(table[1, 0, 4:], table[1, 2, 4:])  # same row, same second half
    assert torch.allclose(table[0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))


def test_unpatchify_inverts_channel_last_patches():
    image = torch.randn(2, 3, 8, 8)
    p = 2
    tokens = image.reshape(2, 3, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 3)
    assert torch.equal(unpatchify(tokens, p, 3), image)


def test_non_square_or_indivisible_inputs_are_refused():
    from haste_core.errors import RecipeError

    arch = SiTArch(depth=4, hidden_size=64, num_heads=4, patch_size=4)
    with pytest.raises(RecipeError, match="side divides by the patch size 4; the data gives 6×6"):
        SiT.describe(SiT.Config(), data=DataSpec((1, 6, 6), (1, 6, 6), 10, 10), arch=arch)
