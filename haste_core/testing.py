"""Contract checks for plugin authors: call them from your own tests.

    from haste_core.testing import check_teacher
    def test_my_teacher():
        check_teacher(MyTeacher)

Each ``check_*`` builds the component with a small configuration (its ``example_config``), exercises the
interface, and raises ``AssertionError`` naming the broken promise. Classes or registry entries are accepted.
Big students (over ``max_params`` parameters) are checked on the meta device: shapes only, no numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haste_core.config.policy_metrics import check_metrics_read
from haste_core.errors import RecipeError
from haste_core.interfaces import (
    Alignment,
    Capture,
    Dataset,
    DataSpec,
    Fired,
    Objective,
    PolicyContext,
    Student,
    StudentOutput,
    StudentSpec,
    Teacher,
    TeacherOutput,
    TeacherSpec,
    Termination,
)
from haste_core.ops import DENOISE, REACH_PREFIX, dot_key
from haste_core.registry import Entry

SMALL_DATA = DataSpec(x_shape=(4, 16, 16), image_shape=(3, 16, 16), num_classes=10, num_items=64)
CAPTURE_CHECK_STD = 0.05  # random weights for the capture check: logits of spread ~0.1-1, predictions ~1
MAX_REAL_PARAMS = 50_000_000  # bigger students and teachers are checked on the meta device (shapes only)


def _entry(component: Entry | type) -> Entry:
    return component if isinstance(component, Entry) else Entry(name=component.__name__, cls=component, plugin="test")


def build_student(component: Entry | type, config: Any, data: DataSpec) -> Student:
    """A student built as the trainer builds it: ``describe`` first, its spec passed in."""
    entry = _entry(component)
    return entry.build(config, data=data, spec=entry.describe(config, data=data))


def build_teacher(
    component: Entry | type,
    config: Any,
    data: DataSpec,
    student: StudentSpec,
    resolve_weights: Any = None,
) -> Teacher:
    """A teacher built as the trainer builds it: ``describe`` first, its spec passed in."""
    entry = _entry(component)
    spec = entry.describe(config, data=data, student=student)
    resolve = resolve_weights or (lambda kind, name: None)
    return entry.build(config, data=data, student=student, spec=spec, resolve_weights=resolve)


def example_cond(data: DataSpec, batch: int, generator: torch.Generator) -> Tensor | dict[str, Tensor]:
    """A batch of conditions for ``data``: class ids, or random caption embeddings with some padding."""
    if not data.text_dim:
        return torch.arange(batch) % max(data.num_classes, 1)
    mask = torch.ones(batch, data.text_len, dtype=torch.bool)
    mask[0, data.text_len // 2 :] = False  # the first caption is padded after half its tokens
    cond = {"text": torch.randn((batch, data.text_len, data.text_dim), generator=generator), "text_mask": mask}
    if data.pooled_dim:
        cond["pooled"] = torch.randn((batch, data.pooled_dim), generator=generator)
    return cond


def _to(cond: Any, device: torch.device) -> Any:
    return {k: v.to(device) for k, v in cond.items()} if isinstance(cond, dict) else cond.to(device)


def check_student(component: Entry | type, *, data: DataSpec | None = None, batch: int = 2) -> Student:
    """Shapes, zero output at init (adaLN-Zero students), capture of every block, capture not changing the
    prediction, gradients to every parameter (conditional and null-conditional passes), null condition."""
    entry = _entry(component)
    config = entry.cls.example_config()
    data = data or entry.cls.example_data()
    spec: StudentSpec = entry.describe(config, data=data)
    with torch.device("meta"):
        meta_model = build_student(entry, config, data)
    params = sum(p.numel() for p in meta_model.parameters())
    on_meta = params > MAX_REAL_PARAMS
    model = meta_model if on_meta else build_student(entry, config, data)
    assert isinstance(model, Student), f"{entry.name} builds a {type(model).__name__}, not a Student"
    for key in ("depth", "hidden_size", "num_heads", "grid"):
        assert getattr(model, key) == getattr(spec, key), (
            f"{entry.name}.{key}={getattr(model, key)} but describe() says {getattr(spec, key)}"
        )
    device = torch.device("meta") if on_meta else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn((batch, *data.x_shape), generator=generator).to(device)
    t = torch.rand(batch, generator=generator).to(device)
    cond = _to(example_cond(data, batch, generator), device)
    every = frozenset(range(spec.depth))
    model.eval()
    with torch.no_grad():
        plain = model(x_t, t, cond)
        captured = model(x_t, t, cond, capture=Capture(hidden=every, attn=every))
    tokens = spec.grid * spec.grid
    assert isinstance(plain, StudentOutput), f"{entry.name}.forward must return a StudentOutput"
    channels = data.x_shape[0] * (2 if model.learn_sigma else 1)
    assert plain.pred.shape == (batch, channels, *data.x_shape[1:]), (
        f"{entry.name}: pred has shape {tuple(plain.pred.shape)} for x_t {tuple(x_t.shape)}; want {channels} channels"
    )
    assert not plain.hidden and not plain.attn_logits, f"{entry.name}: returned captures that were not asked for"
    assert set(captured.hidden) == every and set(captured.attn_logits) == every, (
        f"{entry.name}: capture of every block failed"
    )
    for index in every:
        assert captured.hidden[index].shape == (batch, tokens, spec.hidden_size), f"{entry.name}: hidden[{index}] shape"
        assert captured.attn_logits[index].shape == (batch, spec.num_heads, tokens, tokens), (
            f"{entry.name}: attn_logits[{index}] shape"
        )
    null = model.null_cond(cond)
    if isinstance(cond, dict):
        assert {k: v.shape for k, v in null.items()} == {k: v.shape for k, v in cond.items()}, (
            f"{entry.name}: null_cond changes the layout of cond"
        )
    else:
        assert null.shape == cond.shape, f"{entry.name}: null_cond changes the shape of cond"
    if on_meta:
        return model
    if model.zero_init:
        assert not plain.pred.any(), f"{entry.name} says zero_init but predicts non-zero values at initialisation"
    # zero-initialised gates would hide any difference between the two paths, and weights of DiT's init scale
    # (0.02) leave the attention almost uniform, which hides a wrong logit scale or softmax axis
    _scramble(model, std=CAPTURE_CHECK_STD)
    with torch.no_grad():
        plain = model(x_t, t, cond).pred
        captured = model(x_t, t, cond, capture=Capture(hidden=every, attn=every)).pred
    assert plain.abs().max() > 0, f"{entry.name}: the prediction is zero for random weights"
    assert torch.allclose(plain, captured, atol=1e-5), f"{entry.name}: capturing changes the prediction"
    model.train()
    out = model(x_t, t, cond, capture=Capture(hidden=every))
    unconditional = model(x_t, t, model.null_cond(cond)).pred
    loss = out.pred.square().mean() + unconditional.square().mean()
    (loss + sum(h.square().mean() for h in out.hidden.values())).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"{entry.name}: no gradient reaches {missing[:3]}"
    return model


def _scramble(model: torch.nn.Module, std: float = 0.02) -> None:
    """Random weights everywhere, at the scale of DiT's own initialisation (predictions of order 1)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def check_teacher(
    component: Entry | type,
    *,
    data: DataSpec | None = None,
    student: StudentSpec | None = None,
    batch: int = 2,
) -> Teacher:
    """Frozen and in eval mode, patch-token and attention shapes for every block, no gradients, capture not
    changing the tokens. Big teachers (over ``MAX_REAL_PARAMS`` parameters) are checked on the meta device."""
    entry = _entry(component)
    config = entry.cls.example_config()
    if data is None:
        data = entry.cls.example_data()
    if student is None:
        student = StudentSpec(name="student", depth=4, hidden_size=64, num_heads=4, grid=4)
    spec: TeacherSpec = entry.describe(config, data=data, student=student)
    with torch.device("meta"):
        meta_teacher = build_teacher(entry, config, data, student)
    on_meta = sum(p.numel() for p in meta_teacher.parameters()) > MAX_REAL_PARAMS
    teacher = meta_teacher if on_meta else build_teacher(entry, config, data, student)
    assert isinstance(teacher, Teacher), f"{entry.name} builds a {type(teacher).__name__}, not a Teacher"
    assert not teacher.training, f"{entry.name} must be in eval mode after construction"
    assert not any(p.requires_grad for p in teacher.parameters()), f"{entry.name} must be frozen (requires_grad False)"
    images = torch.randint(
        0, 256, (batch, *data.image_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    ).to("meta" if on_meta else "cpu")
    every = frozenset(range(spec.depth))
    out = teacher.encode(images, every | {-1}, every)
    assert isinstance(out, TeacherOutput), f"{entry.name}.encode must return a TeacherOutput"
    tokens, maps = spec.token_grid * spec.token_grid, spec.grid * spec.grid
    for index in every | {-1}:
        assert out.tokens[index].shape == (batch, tokens, spec.embed_dim), (
            f"{entry.name}: tokens[{index}] has shape {tuple(out.tokens[index].shape)}"
        )
        assert not out.tokens[index].requires_grad, f"{entry.name}: tokens[{index}] carry gradients"
    for index in every:
        assert out.attn_logits[index].shape == (batch, spec.num_heads, maps, maps), (
            f"{entry.name}: attn_logits[{index}] shape"
        )
        assert not out.attn_logits[index].requires_grad, f"{entry.name}: attn_logits[{index}] carry gradients"
    only_last = teacher.encode(images, frozenset({-1}), frozenset())
    assert set(only_last.tokens) == {-1} and not only_last.attn_logits, (
        f"{entry.name}: returned blocks that were not asked for"
    )
    if not on_meta:
        assert torch.allclose(only_last.tokens[-1], out.tokens[-1], atol=1e-5), (
            f"{entry.name}: capturing attention changes the final tokens"
        )
    return teacher


DEFAULT_STUDENT = StudentSpec(name="student", depth=4, hidden_size=32, num_heads=4, grid=4)
# a teacher of another width and head count (a loss with a projector or head mapping), and one of the student's
# (a loss without heads, such as a Gram-matrix or token-similarity loss)
DEFAULT_TEACHERS = (
    TeacherSpec(name="teacher", depth=4, embed_dim=24, num_heads=2, grid=4),
    TeacherSpec(name="same_width_teacher", depth=4, embed_dim=32, num_heads=4, grid=4),
)


def check_alignment(
    component: Entry | type,
    *,
    student: StudentSpec | None = None,
    teacher: TeacherSpec | None = None,
    batch: int = 2,
) -> Alignment:
    """Declared captures are enough to compute the loss; the loss is an fp32 scalar that reaches every captured
    student tensor; metrics are scalars; an ``attention_view`` names captured blocks and maps the student's heads
    onto the teacher's.

    Without ``student``/``teacher`` the check runs for each of ``DEFAULT_TEACHERS`` (another width, the same
    width) that the alignment's ``check`` accepts, at least one; given, for that pair only. Returns the last
    alignment built."""
    entry = _entry(component)
    student = student or DEFAULT_STUDENT
    pairs = [(student, teacher)] if teacher is not None else [(student, t) for t in DEFAULT_TEACHERS]
    accepted, refusals = [], []
    for pair_student, pair_teacher in pairs:
        config = entry.cls.example_config(student=pair_student, teacher=pair_teacher)
        try:
            entry.cls.check(config, student=pair_student, teacher=pair_teacher)
        except RecipeError as exc:
            refusals.append(f"{pair_teacher}: {exc}")
            continue
        accepted.append((config, pair_student, pair_teacher))
    assert accepted, f"{entry.name}: check() refuses its example_config for every teacher tried: {refusals}"
    return [_exercise_alignment(entry, *case, batch=batch) for case in accepted][-1]


def _exercise_alignment(
    entry: Entry, config: Any, student: StudentSpec, teacher: TeacherSpec, *, batch: int
) -> Alignment:
    alignment = entry.build(config, student=student, teacher=teacher)
    assert isinstance(alignment, Alignment), f"{entry.name} builds a {type(alignment).__name__}, not an Alignment"
    generator = torch.Generator().manual_seed(0)
    tokens, teacher_tokens, teacher_maps = student.grid**2, teacher.token_grid**2, teacher.grid**2
    want_s, want_t = alignment.student_capture(), alignment.teacher_request()

    def rand(*shape: int, grad: bool = False) -> Tensor:
        return torch.randn(shape, generator=generator).requires_grad_(grad)

    student_out = StudentOutput(
        pred=rand(batch, 4, 8, 8),
        hidden={i: rand(batch, tokens, student.hidden_size, grad=True) for i in want_s.hidden},
        attn_logits={i: rand(batch, student.num_heads, tokens, tokens, grad=True) for i in want_s.attn},
    )
    teacher_out = TeacherOutput(
        tokens={i: rand(batch, teacher_tokens, teacher.embed_dim) for i in want_t.hidden},
        attn_logits={i: rand(batch, teacher.num_heads, teacher_maps, teacher_maps) for i in want_t.attn},
    )
    where = f"{entry.name} (student width {student.hidden_size}, teacher width {teacher.embed_dim})"
    loss, metrics = alignment(student_out, teacher_out)
    assert loss.shape == () and loss.dtype == torch.float32, (
        f"{where}: loss must be an fp32 scalar, got {loss.dtype} {tuple(loss.shape)}"
    )
    assert torch.isfinite(loss), f"{where}: loss is not finite"
    assert all(v.shape == () for v in metrics.values()), f"{where}: metrics must be scalars"
    loss.backward()
    inputs = [*student_out.hidden.values(), *student_out.attn_logits.values()]
    assert inputs and all(x.grad is not None for x in inputs), f"{where}: the loss does not reach every captured tensor"
    view = alignment.attention_view()
    for name, (student_block, teacher_block) in (view.pairs if view is not None else {}).items():
        assert student_block in want_s.attn and teacher_block in want_t.attn, (
            f"{where}: attention_view pair {name} names blocks it does not capture"
        )
        with torch.no_grad():
            mapped = view.map_heads(name, student_out.attn_logits[student_block][:, :, :3])
        assert mapped.shape == (batch, teacher.num_heads, 3, tokens), (
            f"{where}: attention_view.map_heads gives {tuple(mapped.shape)}, expected the teacher's heads"
        )
    return alignment


def policy_step_metrics(step: int, labels: Sequence[str], probe: bool = False) -> dict[str, Tensor]:
    """What a policy governing ``labels`` is given after ``step``: the losses (falling, then levelling off) and
    each alignment's term (with one extra metric, ``align/<label>/extra``); on probe steps also the gradient
    probe's ``grad/dot/<a>/<b>`` and ``grad/denoise_sq/<labels>`` (alignments pulling slightly against denoising)."""
    decay = 1.0 / math.sqrt(step)
    metrics = {"loss/denoise": torch.tensor(0.5 + decay)}
    for index, label in enumerate(labels):
        metrics[f"align/{label}"] = torch.tensor(-0.8 + 0.5 * decay / (index + 1))
        metrics[f"align/{label}/extra"] = torch.tensor(decay)
    metrics["loss/total"] = metrics["loss/denoise"] + 0.5 * sum(metrics[f"align/{label}"] for label in labels)
    if probe:
        terms = [DENOISE, *labels]
        for i, a in enumerate(terms):
            for b in terms[i:]:
                metrics[dot_key(a, b)] = torch.tensor(1.0 if a == b else -0.1 * decay)
        if labels:
            metrics[f"{REACH_PREFIX}{'+'.join(labels)}"] = torch.tensor(1.0)
    return metrics


def check_termination(
    component: Entry | type, *, labels: Sequence[str] = ("align",), steps: int = 400, steps_per_epoch: int = 10
) -> Termination:
    """The example config passes the recipe-time checks for ``labels`` (the alignments the policy governs);
    decisions are ``Fired`` or None and stop at the first ``Fired``; a policy restored from its state_dict half
    way decides like the original; weight scales lie in [0, 1]; the probe interval is an int >= 0.

    The policy is given what the trainer gives it (``policy_step_metrics``) for ``steps`` steps, enough for one
    that reads its values every 100 steps to read them several times, and the probe's values on its probe steps.
    """
    entry = _entry(component)
    config = entry.cls.example_config()
    labels = list(labels)
    try:
        check_metrics_read(entry.cls, config, labels)
        entry.cls.check(config, labels=labels)
    except RecipeError as exc:
        raise AssertionError(f"{entry.name}: example_config() is refused for alignments {labels}: {exc}") from None
    context = PolicyContext(max_steps=steps, steps_per_epoch=steps_per_epoch)

    def bound() -> Termination:
        policy = entry.build(config)
        assert isinstance(policy, Termination), f"{entry.name} builds a {type(policy).__name__}, not a Termination"
        policy.bind(labels, context)
        return policy

    def decide(policy: Termination, step: int) -> bool:
        every = policy.probe_every
        metrics = policy_step_metrics(step, labels, probe=every > 0 and step % every == 0)
        try:
            decision = policy.update(step, metrics)
        except Exception as exc:
            raise AssertionError(
                f"{entry.name}.update failed at step {step} given {', '.join(metrics)}: {type(exc).__name__}: {exc}"
            ) from exc
        assert decision is None or isinstance(decision, Fired), (
            f"{entry.name}.update must return Fired or None, got {decision!r} at step {step}"
        )
        return decision is not None

    straight = bound()
    every = straight.probe_every
    assert isinstance(every, int) and every >= 0, f"{entry.name}: probe_every must be an int >= 0, got {every!r}"
    scales = [straight.weight_scale(step) for step in range(1, steps + 1)]
    assert all(0.0 <= s <= 1.0 for s in scales), f"{entry.name}: weight_scale must lie in [0, 1], got {scales}"
    half = steps // 2
    resumed: Termination | None = None
    fired_at = None
    for step in range(1, steps + 1):
        if decide(straight, step):
            fired_at = step
            break
        if step == half:
            resumed = bound()
            resumed.load_state_dict(straight.state_dict())
    if resumed is not None:
        replayed = next((step for step in range(half + 1, steps + 1) if decide(resumed, step)), None)
        assert replayed == fired_at, (
            f"{entry.name}: a policy restored from its state_dict at step {half} fires at step {replayed}, "
            f"the original at step {fired_at}"
        )
    return straight


def check_objective(component: Entry | type, *, batch: int = 8) -> Objective:
    """Training pairs have the data's shape, t lies in [0, 1], t = 0 is data and t = 1 noise, loss is fp32."""
    entry = _entry(component)
    objective = entry.build(entry.cls.example_config())
    assert isinstance(objective, Objective), f"{entry.name} builds a {type(objective).__name__}, not an Objective"
    x0 = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pair = objective.training_pair(x0)
    assert pair.x_t.shape == x0.shape and pair.target.shape == x0.shape, f"{entry.name}: pair shapes differ from x0"
    assert pair.t.shape == (batch,) and bool(((pair.t >= 0) & (pair.t <= 1)).all()), (
        f"{entry.name}: t must be B values in [0, 1]"
    )
    alpha, sigma = objective.alpha_sigma(torch.tensor([0.0, 1.0]))
    assert alpha[0] > alpha[1] and sigma[0] < sigma[1], f"{entry.name}: t = 0 must be data and t = 1 noise"
    loss = objective.loss(pair.target + 0.1, pair)
    assert loss.shape == () and loss.dtype == torch.float32 and loss > 0, (
        f"{entry.name}: loss must be a positive fp32 scalar"
    )
    assert objective.velocity(pair.target, pair.x_t, pair.t).shape == x0.shape, f"{entry.name}: velocity shape"
    return objective


def check_dataset(component: Entry | type) -> Dataset:
    """Items match ``describe``: uint8 images, float x, class ids in range; ``to_images`` gives uint8."""
    entry = _entry(component)
    config = entry.cls.example_config()
    spec: DataSpec = entry.describe(config)
    dataset = entry.build(config, split="train")
    assert isinstance(dataset, Dataset), f"{entry.name} builds a {type(dataset).__name__}, not a Dataset"
    assert dataclasses.asdict(dataset.spec) == dataclasses.asdict(spec), (
        f"{entry.name}: spec {dataset.spec} but describe() gave {spec}"
    )
    assert len(dataset) == spec.num_items, f"{entry.name}: {len(dataset)} items but describe() says {spec.num_items}"
    for index in (0, len(dataset) - 1):
        item = dataset[index]
        assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == spec.image_shape, (
            f"{entry.name}: image of item {index}"
        )
        assert item["x"].is_floating_point() and tuple(item["x"].shape) == spec.x_shape, (
            f"{entry.name}: x of item {index}"
        )
        if spec.num_classes:
            assert 0 <= int(item["cond"]) < spec.num_classes, f"{entry.name}: class of item {index} out of range"
    images = dataset.to_images(torch.stack([dataset[0]["x"], dataset[1]["x"]]))
    assert images.dtype == torch.uint8 and images.shape[0] == 2, f"{entry.name}: to_images must give a uint8 batch"
    return dataset


CHECKS = {
    "students": check_student,
    "teachers": check_teacher,
    "alignments": check_alignment,
    "terminations": check_termination,
    "objectives": check_objective,
    "datasets": check_dataset,
}
"""Registry family -> its contract check (tests parametrise over every registered entry with this)."""
