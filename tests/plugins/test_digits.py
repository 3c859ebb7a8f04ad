"""The embedded default: the digits data set and the digits_vit teacher (trained once per test session)."""

from __future__ import annotations

import re

import pytest
import torch
from haste_data.digits import Digits, load_split
from haste_teachers.digits_vit import DigitsViT, cache_path, heldout_accuracy

from haste_core.errors import HasteError
from haste_core.interfaces import StudentSpec
from haste_core.testing import build_teacher
from haste_core.weights.cache import cache_dir

STUDENT_GRID_4 = StudentSpec(name="sit_micro_2", depth=4, hidden_size=64, num_heads=4, grid=4)


def test_split_is_fixed_disjoint_and_complete():
    train_images, train_labels = load_split("train")
    heldout_images, heldout_labels = load_split("heldout")
    assert (len(train_labels), len(heldout_labels)) == (1438, 359)
    assert torch.equal(load_split("train")[0], train_images)  # the same seed gives the same split
    together = torch.cat([train_images, heldout_images]).flatten(1)
    assert len({tuple(row.tolist()) for row in together}) >= 1797 - 20  # a few digits are pixel-identical
    assert torch.bincount(train_labels).min() > 120  # every class is in the training split
    assert not torch.equal(load_split("train", seed=1)[1], train_labels)


def test_items_scale_pixels_for_student_and_teacher():
    dataset = Digits(Digits.Config(), split="train")
    item = dataset[5]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, 8, 8)
    assert item["x"].shape == (1, 8, 8) and item["x"].min() >= -1 and item["x"].max() <= 1
    assert item["image"].max() == 255 and set(item["image"].unique().tolist()) <= {
        round(v * 255 / 16) for v in range(17)
    }
    assert torch.equal(dataset.to_images(item["x"][None])[0], item["image"])  # to_images inverts the scaling
    dataset.set_images_needed(False)
    assert set(dataset[5]) == {"x", "cond"}


@pytest.fixture(scope="session")
def trained_teacher():
    """The teacher as a quickstart run gets it: trained on first use (about 30 s), cached for the session."""
    teacher = build_teacher(DigitsViT, DigitsViT.Config(), DigitsViT.example_data(), STUDENT_GRID_4)
    return teacher


@pytest.mark.slow
def test_trained_teacher_classifies_heldout_digits(trained_teacher):
    images, labels = load_split("heldout")
    accuracy = heldout_accuracy(trained_teacher.net, images, labels)
    assert accuracy >= 0.95
    assert trained_teacher.heldout_accuracy == pytest.approx(accuracy)
    assert list((cache_dir() / "digits_vit").glob("*.pt"))


def test_cached_teacher_is_reused_not_retrained(trained_teacher, caplog):
    caplog.set_level("INFO", logger="haste")
    again = build_teacher(DigitsViT, DigitsViT.Config(), DigitsViT.example_data(), STUDENT_GRID_4)
    assert "training on" not in caplog.text
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), trained_teacher.state_dict().values(), strict=True)
    )


def test_encode_runs_only_the_blocks_it_needs(trained_teacher):
    ran = []
    hooks = [
        b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(trained_teacher.net.blocks)
    ]
    images = load_split("heldout")[0][:3]
    trained_teacher.encode(images, frozenset({1}), frozenset({0}))
    assert ran == [0, 1]
    ran.clear()
    out = trained_teacher.encode(images, frozenset({-1}), frozenset({2, 3}))
    assert ran == [0, 1, 2, 3]
    for hook in hooks:
        hook.remove()
    assert set(out.tokens) == {-1} and set(out.attn_logits) == {2, 3}
    assert out.tokens[-1].shape == (3, 16, 64) and out.attn_logits[3].shape == (
        3,
        4,
        16,
        16,
    )  # class token removed


def test_returned_logits_are_the_attention_the_block_applied(trained_teacher):
    images = load_split("heldout")[0][:2]
    seen = {}
    attn = trained_teacher.net.blocks[2].attn
    hook = attn.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out[0]))
    captured = trained_teacher.encode(images, frozenset({2}), frozenset({2}))
    hook.remove()
    fused = trained_teacher.encode(images, frozenset({2}), frozenset())
    assert torch.allclose(captured.tokens[2], fused.tokens[2], atol=1e-5)  # capture does not change the tokens
    B, N, D = seen["x"].shape
    q, k, v = attn.qkv(seen["x"]).reshape(B, N, 3, 4, D // 4).permute(2, 0, 3, 1, 4)
    full_logits = (q * (D // 4) ** -0.5) @ k.transpose(-2, -1)
    assert torch.allclose(captured.attn_logits[2], full_logits[:, :, 1:, 1:], atol=1e-5)
    applied = attn.proj((full_logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D))
    assert torch.allclose(applied, seen["out"], atol=1e-5)


def test_teacher_is_frozen_and_follows_the_student_grid(trained_teacher):
    assert not trained_teacher.training and not any(p.requires_grad for p in trained_teacher.parameters())
    student_grid_8 = StudentSpec(name="sit_micro_1", depth=4, hidden_size=64, num_heads=4, grid=8)
    wide = build_teacher(DigitsViT, DigitsViT.Config(), DigitsViT.example_data(), student_grid_8)
    out = wide.encode(load_split("heldout")[0][:2], frozenset({-1}), frozenset({1}))
    assert out.tokens[-1].shape == (2, 64, 64) and out.attn_logits[1].shape == (2, 4, 64, 64)
    assert wide.net.pos_embed.shape == (1, 65, 64)  # positions resampled once, at build time


def test_weights_file_and_resolve_hook(trained_teacher, tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(trained_teacher.net.state_dict(), path)
    from_file = build_teacher(DigitsViT, DigitsViT.Config(weights=str(path)), DigitsViT.example_data(), STUDENT_GRID_4)
    images = load_split("heldout")[0][:4]
    expected = trained_teacher.encode(images, frozenset({-1}), frozenset())
    assert torch.equal(from_file.encode(images, frozenset({-1}), frozenset()).tokens[-1], expected.tokens[-1])
    asked = []
    via_hook = build_teacher(
        DigitsViT, DigitsViT.Config(), DigitsViT.example_data(), STUDENT_GRID_4,
        resolve_weights=lambda kind, name: asked.append((kind, name)) or path,
    )  # fmt: skip
    assert asked == [("teacher", "digits_vit")]
    assert torch.equal(via_hook.encode(images, frozenset({-1}), frozenset()).tokens[-1], expected.tokens[-1])


def test_teacher_cache_is_per_split(trained_teacher):
    assert cache_path().is_file() and cache_path().parent == cache_dir() / "digits_vit"
    assert cache_path().name == "digits_vit_v1_heldout0.2_split0_seed0.pt"
    assert cache_path(0.3, 1).name == "digits_vit_v1_heldout0.3_split1_seed0.pt"
    assert not cache_path(0.3, 1).exists()  # another split would train its own teacher


def test_resolve_hook_pointing_nowhere_is_a_clear_error(tmp_path):
    missing = tmp_path / "mirror" / "digits_vit.pt"
    with pytest.raises(HasteError, match=re.escape(f"haste_resolve_weights offered {missing} for teacher digits_vit")):
        build_teacher(
            DigitsViT, DigitsViT.Config(), DigitsViT.example_data(), STUDENT_GRID_4,
            resolve_weights=lambda kind, name: missing,
        )  # fmt: skip


def test_mismatched_weights_file_names_the_key_and_shapes(trained_teacher, tmp_path):
    state = dict(trained_teacher.net.state_dict())
    state["head.weight"] = torch.zeros(7, 64)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    message = f"{path} does not fit digits_vit: 'head.weight' has shape (7, 64) in the file and (10, 64) in the model"
    with pytest.raises(HasteError, match=re.escape(message)):
        build_teacher(DigitsViT, DigitsViT.Config(weights=str(path)), DigitsViT.example_data(), STUDENT_GRID_4)
