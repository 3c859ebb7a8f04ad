"""The repa and attention alignment losses: values on known inputs, captures requested, and their errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from haste_alignment.attention import AttentionDistillation
from haste_alignment.attention_loss import attention_loss_naive
from haste_alignment.repa import REPA
from torch import nn

from haste_core.errors import RecipeError
from haste_core.interfaces import Capture, StudentOutput, StudentSpec, TeacherOutput, TeacherSpec

STUDENT = StudentSpec(name="sit_b_2", depth=12, hidden_size=32, num_heads=12, grid=4)
TEACHER = TeacherSpec(name="dinov2_vitb14", depth=12, embed_dim=32, num_heads=12, grid=4)


def attention_cross_entropy(student_logits_BHNN: torch.Tensor, teacher_logits_BHNN: torch.Tensor) -> torch.Tensor:
    """Mean over (B, H, queries) of -sum_keys softmax(teacher) log_softmax(student), by plain autograd."""
    return attention_loss_naive(student_logits_BHNN, teacher_logits_BHNN).loss


def repa(**config) -> REPA:
    alignment = REPA(REPA.Config(student_block=3, **config), student=STUDENT, teacher=TEACHER)
    alignment.projector = nn.Identity()  # isolate the loss from the projector
    return alignment


def test_repa_is_negative_mean_cosine():
    alignment = repa()
    tokens = torch.randn(2, 16, 32)
    loss_same, _ = alignment(StudentOutput(pred=tokens, hidden={3: tokens * 3.0}), TeacherOutput(tokens={-1: tokens}))
    loss_opposite, _ = alignment(StudentOutput(pred=tokens, hidden={3: -tokens}), TeacherOutput(tokens={-1: tokens}))
    assert loss_same.item() == pytest.approx(-1.0, abs=1e-6)
    assert loss_opposite.item() == pytest.approx(1.0, abs=1e-6)
    half = tokens.clone()
    half[:, :8] *= -1  # half the tokens point the other way
    loss_half, _ = alignment(StudentOutput(pred=tokens, hidden={3: half}), TeacherOutput(tokens={-1: tokens}))
    assert loss_half.item() == pytest.approx(0.0, abs=1e-6)


def test_repa_is_fp32_for_half_inputs():
    alignment = repa()
    tokens = torch.randn(2, 16, 32).to(torch.bfloat16)
    loss, _ = alignment(StudentOutput(pred=tokens, hidden={3: tokens}), TeacherOutput(tokens={-1: tokens}))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(-1.0, abs=1e-5)


def test_repa_projector_matches_reference_layout():
    alignment = REPA(REPA.Config(student_block=7), student=STUDENT, teacher=TeacherSpec("t", 12, 768, 12, 4))
    shapes = {k: tuple(v.shape) for k, v in alignment.state_dict().items()}
    assert shapes == {
        "projector.0.weight": (2048, 32), "projector.0.bias": (2048,), "projector.2.weight": (2048, 2048),
        "projector.2.bias": (2048,), "projector.4.weight": (768, 2048), "projector.4.bias": (768,),
    }  # fmt: skip
    assert alignment.student_capture() == Capture(hidden=frozenset({7}))
    assert alignment.teacher_request() == Capture(hidden=frozenset({-1}))


def test_attention_loss_is_cross_entropy_of_teacher_softmax():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 5, 5, generator=generator)
    teacher = torch.randn(2, 3, 5, 5, generator=generator)
    p, q = teacher.softmax(-1), student.softmax(-1)
    expected = -(p * q.log()).sum(-1).mean()
    assert attention_cross_entropy(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)
    entropy = -(p * p.log()).sum(-1).mean()
    assert attention_cross_entropy(teacher, teacher).item() == pytest.approx(entropy.item(), rel=1e-6)  # its minimum
    uniform = attention_cross_entropy(torch.zeros(1, 1, 4, 4), teacher[:1, :1, :4, :4])
    assert uniform.item() == pytest.approx(math.log(4), rel=1e-6)


def test_attention_uses_the_first_teacher_heads_and_averages_pairs():
    student_spec = StudentSpec(name="sit_xl_2", depth=28, hidden_size=32, num_heads=16, grid=4)
    alignment = AttentionDistillation(
        AttentionDistillation.Config(pairs=((4, 8), (5, 9))), student=student_spec, teacher=TEACHER
    )
    assert alignment.student_capture() == Capture(attn=frozenset({4, 5}))
    assert alignment.teacher_request() == Capture(attn=frozenset({8, 9}))
    generator = torch.Generator().manual_seed(0)
    s = {i: torch.randn(2, 16, 16, 16, generator=generator) for i in (4, 5)}
    t = {i: torch.randn(2, 12, 16, 16, generator=generator) for i in (8, 9)}
    loss, metrics = alignment(StudentOutput(pred=s[4], attn_logits=s), TeacherOutput(attn_logits=t))
    pair_4_8 = attention_cross_entropy(s[4][:, :12], t[8])
    pair_5_9 = attention_cross_entropy(s[5][:, :12], t[9])
    assert metrics["pair_4_8"].item() == pytest.approx(pair_4_8.item())
    assert loss.item() == pytest.approx((pair_4_8 + pair_5_9).item() / 2)


@pytest.mark.parametrize(
    ("student", "teacher", "config", "message"),
    [
        (StudentSpec("sit_s_2", 12, 32, 6, 4), TEACHER, {"pairs": ((4, 8),)},
         "heads 'first' needs at least as many student heads as teacher heads: sit_s_2 has 6, dinov2_vitb14 has 12"),
        (STUDENT, TeacherSpec("dinov2_vitb14", 12, 32, 12, 8), {"pairs": ((4, 8),)},
         "attention maps cannot be compared across token grids: sit_b_2 has 4×4 tokens, dinov2_vitb14 8×8"),
        (STUDENT, TEACHER, {"pairs": ((4, 12),)}, "teacher block 12 does not exist (dinov2_vitb14 has blocks 0..11)"),
        (STUDENT, TEACHER, {"pairs": ()}, "give at least one [student_block, teacher_block] pair"),
    ],
)  # fmt: skip
def test_attention_errors(student, teacher, config, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        AttentionDistillation.check(AttentionDistillation.Config(**config), student=student, teacher=teacher)


def test_repa_grid_mismatch_is_refused():
    with pytest.raises(RecipeError, match=re.escape("token grids differ: sit_b_2 has 4×4 tokens, t 8×8")):
        REPA.check(REPA.Config(student_block=3), student=STUDENT, teacher=TeacherSpec("t", 12, 32, 12, 8))
