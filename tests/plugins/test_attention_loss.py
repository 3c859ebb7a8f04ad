"""The chunked attention loss against plain autograd, and the attention alignment's head mappings and options."""

from __future__ import annotations

import math
import re

import pytest
import torch
from haste_alignment.attention import AttentionDistillation
from haste_alignment.attention_loss import attention_loss, attention_loss_naive

from haste_core.errors import RecipeError
from haste_core.interfaces import StudentOutput, StudentSpec, TeacherOutput, TeacherSpec

TEACHER = TeacherSpec(name="dinov2_vitb14", depth=12, embed_dim=32, num_heads=4, grid=4)


def student_spec(heads: int) -> StudentSpec:
    return StudentSpec(name=f"sit_h{heads}", depth=12, hidden_size=32, num_heads=heads, grid=4)


def logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float() * scale


@pytest.mark.parametrize("kind", ["cross_entropy", "kl"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("chunk_elements", [1, 40, 10_000])  # one row per chunk, rows split inside a sample, all
def test_chunked_and_naive_agree_with_gradients(kind, temperature, chunk_elements):
    teacher = logits(3, 4, 16, 16, seed=1)
    student_big = logits(3, 6, 16, 16, seed=2).requires_grad_(True)
    student = student_big[:, :4]  # a head slice, as heads 'first' gives: not contiguous
    upstream = 0.7
    naive = attention_loss_naive(student, teacher, kind=kind, temperature=temperature)
    (grad_naive,) = torch.autograd.grad(naive.loss * upstream, student_big)
    chunked = attention_loss(student, teacher, kind=kind, temperature=temperature, chunk_elements=chunk_elements)
    (grad_chunked,) = torch.autograd.grad(chunked.loss * upstream, student_big)
    for name in ("loss", "kl", "teacher_entropy", "student_entropy"):
        assert getattr(chunked, name).item() == pytest.approx(getattr(naive, name).item(), abs=1e-6), name
    assert (grad_chunked - grad_naive).abs().max().item() < 1e-6
    assert grad_naive.abs().max().item() > 1e-4  # the comparison is not between two zeros
    assert torch.all(grad_chunked[:, 4:] == 0)  # heads outside the slice get no gradient


def test_kl_is_zero_at_perfect_alignment_and_cross_entropy_is_the_entropy():
    teacher = logits(2, 4, 16, 16, seed=3)
    ce = attention_loss(teacher.clone(), teacher)
    kl = attention_loss(teacher.clone(), teacher, kind="kl")
    assert kl.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert ce.loss.item() == pytest.approx(ce.teacher_entropy.item(), abs=1e-6) and ce.loss.item() > 0.1
    uniform = attention_loss(torch.zeros(1, 1, 16, 16), teacher[:1, :1])
    assert uniform.loss.item() == pytest.approx(math.log(16), rel=1e-6)
    assert uniform.student_entropy.item() == pytest.approx(math.log(16), rel=1e-6)


def test_half_precision_logits_give_an_fp32_loss_and_a_gradient_of_their_dtype():
    student = logits(2, 4, 16, 16, seed=4).to(torch.bfloat16).requires_grad_(True)
    result = attention_loss(student, logits(2, 4, 16, 16, seed=5).to(torch.bfloat16), chunk_elements=64)
    result.loss.backward()
    assert result.loss.dtype == torch.float32 and student.grad.dtype == torch.bfloat16


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match=re.escape("must both be B×H×Nq×N with the same shape; got (1, 6, 4, 4)")):
        attention_loss(torch.zeros(1, 6, 4, 4), torch.zeros(1, 4, 4, 4))


def alignment(heads_student: int, **config) -> AttentionDistillation:
    """Checked as the recipe loader checks it, then built."""
    config = AttentionDistillation.Config(**{"pairs": ((4, 8),), **config})
    AttentionDistillation.check(config, student=student_spec(heads_student), teacher=TEACHER)
    return AttentionDistillation(config, student=student_spec(heads_student), teacher=TEACHER)


@pytest.mark.parametrize("heads", ["first", "mean", "learned"])
def test_head_mappings_give_teacher_shaped_logits(heads):
    module = alignment(8, heads=heads)
    student = logits(2, 8, 16, 16, seed=6)
    mapped = module.map_heads(student)
    assert mapped.shape == (2, 4, 16, 16)
    if heads == "first":
        assert torch.equal(mapped, student[:, :4])
    else:  # mean, and learned at its initial value, average pairs of consecutive heads
        assert torch.allclose(mapped, (student[:, 0::2] + student[:, 1::2]) / 2, atol=1e-6)
    trainable = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert trainable == ({"mixing.0": (4, 8)} if heads == "learned" else {})


def test_learned_mixing_keeps_fp32_logits_under_autocast():
    module = alignment(8, heads="learned")
    student = logits(2, 8, 16, 16, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mapped = module.map_heads(student)
    assert mapped.dtype == torch.float32
    assert torch.allclose(mapped, torch.einsum("ts,bsqk->btqk", module.mixing[0], student), atol=1e-6)


def test_learned_mixing_is_trained_by_the_loss():
    module = alignment(6, heads="learned", pairs=((4, 8), (5, 9)))
    assert [tuple(p.shape) for p in module.mixing] == [(4, 6), (4, 6)]
    assert torch.equal(module.mixing[0][:, :4], torch.eye(4))  # 4 does not divide 6: starts as 'first'
    s = {i: logits(2, 6, 16, 16, seed=i).requires_grad_(True) for i in (4, 5)}
    t = {i: logits(2, 4, 16, 16, seed=i + 10) for i in (8, 9)}
    loss, _ = module(StudentOutput(pred=s[4], attn_logits=s), TeacherOutput(attn_logits=t))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.mixing)


@pytest.mark.parametrize(
    ("heads_student", "heads", "message"),
    [
        (2, "first", "heads 'first' needs at least as many student heads as teacher heads: sit_h2 has 2, "
                     "dinov2_vitb14 has 4; use heads: learned"),
        (6, "mean", "heads 'mean' averages equal groups of student heads, so dinov2_vitb14's 4 heads must divide "
                    "sit_h6's 6; use heads: first or learned"),
    ],
)  # fmt: skip
def test_impossible_head_mappings_are_refused(heads_student, heads, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        alignment(heads_student, heads=heads)
    alignment(heads_student, heads="learned")  # learned maps any number of heads


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pair_weights": (1.0,), "pairs": ((4, 8), (5, 9))}, "give one weight per pair: 2 pairs, 1 weights"),
        ({"query_fraction": 0.0}, "must be in (0, 1], got 0.0"),
        ({"temperature": -1.0}, "must be positive, got -1.0"),
        ({"pair_weights": (0.0,)}, "pair_weights: weights must be 0 or more with a positive sum, got [0.0]"),
    ],
)
def test_bad_settings_are_refused(config, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        AttentionDistillation.Config(**{"pairs": ((4, 8),), **config})


def test_pair_weights_kind_and_per_pair_metrics():
    s = {i: logits(2, 4, 16, 16, seed=i) for i in (4, 5)}
    t = {i: logits(2, 4, 16, 16, seed=i + 10) for i in (8, 9)}
    module = alignment(4, pairs=((4, 8), (5, 9)), pair_weights=(3.0, 1.0), kind="kl", temperature=2.0)
    loss, metrics = module(StudentOutput(pred=s[4], attn_logits=s), TeacherOutput(attn_logits=t))
    pair_4_8 = attention_loss_naive(s[4], t[8], kind="kl", temperature=2.0)
    pair_5_9 = attention_loss_naive(s[5], t[9], kind="kl", temperature=2.0)
    assert loss.item() == pytest.approx(0.75 * pair_4_8.loss.item() + 0.25 * pair_5_9.loss.item(), abs=1e-6)
    assert set(metrics) == {f"pair_{p}{suffix}" for p in ("4_8", "5_9") for suffix in ("", "/kl", "/entropy")}
    assert metrics["pair_4_8"].item() == pytest.approx(pair_4_8.loss.item(), abs=1e-6)
    assert metrics["pair_5_9/kl"].item() == pytest.approx(pair_5_9.kl.item(), abs=1e-6)
    assert metrics["pair_4_8/entropy"].item() == pytest.approx(pair_4_8.student_entropy.item(), abs=1e-6)


def test_query_fraction_uses_a_random_share_of_rows():
    s = {4: logits(2, 4, 16, 16, seed=4)}
    t = {8: logits(2, 4, 16, 16, seed=8)}
    module = alignment(4, query_fraction=0.25)
    torch.manual_seed(0)
    loss, _ = module(StudentOutput(pred=s[4], attn_logits=s), TeacherOutput(attn_logits=t))
    torch.manual_seed(0)
    rows = torch.randperm(16)[:4]
    expected = attention_loss_naive(s[4][:, :, rows], t[8][:, :, rows]).loss
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    full = attention_loss_naive(s[4], t[8]).loss
    assert abs(loss.item() - full.item()) > 1e-4  # a subset, not all rows


@pytest.mark.parametrize("kind", ["cross_entropy", "kl"])
@pytest.mark.parametrize(("temperature", "chunk_elements"), [(1.0, 1), (0.3, 5), (2.5, 10_000)])
def test_the_hand_written_backward_passes_gradcheck_in_float64(kind, temperature, chunk_elements):
    generator = torch.Generator().manual_seed(11)
    student = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64).requires_grad_(True)
    teacher = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return attention_loss(x, teacher, kind=kind, temperature=temperature, chunk_elements=chunk_elements).loss

    assert loss(student).dtype == torch.float64  # fp32 at least: fp64 logits are not rounded to fp32
    assert torch.autograd.gradcheck(loss, (student,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("heads", ["first", "mean", "learned"])
@pytest.mark.parametrize(("query_fraction", "pair_weights"), [(1.0, ()), (0.5, (3.0, 1.0))])
def test_the_alignment_passes_gradcheck_with_every_option(heads, query_fraction, pair_weights):
    config = {"pairs": ((4, 8), (5, 9)), "heads": heads, "kind": "kl", "temperature": 0.7, "chunk_elements": 7}
    module = alignment(8, query_fraction=query_fraction, pair_weights=pair_weights, **config).double()
    generator = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for mixing in module.mixing:  # away from the symmetric starting point
            mixing.add_(0.1 * torch.randn(mixing.shape, generator=generator, dtype=torch.float64))
    students = [torch.randn(1, 8, 4, 4, generator=generator, dtype=torch.float64).requires_grad_(True) for _ in "ab"]
    teachers = {block: torch.randn(1, 4, 4, 4, generator=generator, dtype=torch.float64) for block in (8, 9)}

    def loss(s4: torch.Tensor, s5: torch.Tensor, *mixings: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same query rows at every evaluation
        out, _ = module(StudentOutput(pred=s4, attn_logits={4: s4, 5: s5}), TeacherOutput(attn_logits=teachers))
        return out

    # fast mode: the Jacobian along random directions (the full check of the loss itself is above)
    assert torch.autograd.gradcheck(loss, (*students, *module.mixing), eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_backward_keeps_only_the_input_logits_not_softmax_copies():
    student = logits(2, 4, 16, 16, seed=13).requires_grad_(True)
    teacher = logits(2, 4, 16, 16, seed=14)
    for loss_fn, most in ((attention_loss, 2 * student.numel()), (attention_loss_naive, 3 * student.numel())):
        saved: list[int] = []

        def pack(tensor: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss_fn(student, teacher).loss.backward()
        if loss_fn is attention_loss:
            assert sum(saved) == most  # the student's and the teacher's logits themselves, nothing else
        else:
            assert sum(saved) >= most  # plain autograd keeps softmax-sized tensors as well
