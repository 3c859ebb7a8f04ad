"""The contract checks of haste_core.testing test what the interfaces promise: a policy sees the metrics a run
gives it (long enough for one that reads every 100 steps), and an alignment without heads can be checked."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch.nn.functional as F

from haste_core import Alignment, Capture, Fired, RecipeError, Termination, conflict_cosine
from haste_core.testing import check_alignment, check_termination


class ReadsEvery100(Termination):
    """Reads its alignment's term every 100 steps, as the docs advise."""

    @dataclass(kw_only=True, frozen=True)
    class Config:
        key: str = ""  # empty: align/<label> of the first governed alignment

    def __init__(self, config):
        super().__init__(config)
        self.read: list[tuple[int, float]] = []

    def update(self, step, metrics):
        if step % 100 == 0:
            self.read.append((step, metrics[self.config.key or f"align/{self.terms[0]}"].item()))
        return None


def test_a_policy_reading_every_100_steps_reads_its_alignment_term():
    policy = check_termination(ReadsEvery100, labels=["token_relation"])
    assert [step for step, _ in policy.read] == [100, 200, 300, 400]
    assert all(-1.0 < value < 0.0 for _, value in policy.read)


def test_a_policy_reading_a_metric_the_run_does_not_give_fails_the_check():
    class ReadsTypo(ReadsEvery100):
        @classmethod
        def example_config(cls, **specs):
            return cls.Config(key="align/typo")

    with pytest.raises(AssertionError, match=r"update failed at step 100 given loss/denoise, align/repa, "):
        check_termination(ReadsTypo, labels=["repa"])


def test_a_policy_naming_a_metric_it_is_not_given_is_refused_like_a_recipe():
    class NamesTypo(ReadsEvery100):
        @classmethod
        def example_config(cls, **specs):
            return cls.Config(key="align/typo")

        @classmethod
        def metrics_read(cls, config):
            return {"key": config.key}

    with pytest.raises(AssertionError, match=r"example_config\(\) is refused .*key: metric 'align/typo'"):
        check_termination(NamesTypo, labels=["repa"])


def test_a_probing_policy_gets_the_probe_on_its_probe_steps_and_is_not_called_after_firing():
    class StopsOnConflict(Termination):
        probe_every = 50

        @dataclass(kw_only=True, frozen=True)
        class Config:
            pass

        def __init__(self, config):
            super().__init__(config)
            self.cosines, self.fired = [], False

        def update(self, step, metrics):
            assert not self.fired, "called again after firing"
            cosine = conflict_cosine(metrics, self.terms)
            if cosine is not None:
                self.cosines.append((step, cosine))
            if step == 150:
                self.fired = True
                return Fired("enough")
            return None

        def state_dict(self):
            return {"cosines": list(self.cosines)}

        def load_state_dict(self, state):
            self.cosines = [tuple(item) for item in state["cosines"]]

    policy = check_termination(StopsOnConflict, labels=["a", "b"])
    assert [step for step, _ in policy.cosines] == [50, 100, 150]
    assert all(cosine < 0 for _, cosine in policy.cosines)  # the check's alignments pull against denoising


def test_a_policy_that_forgets_its_state_fails_the_check():
    class Forgetful(Termination):
        @dataclass(kw_only=True, frozen=True)
        class Config:
            pass

        def __init__(self, config):
            super().__init__(config)
            self.seen = 0

        def update(self, step, metrics):
            self.seen += 1
            return Fired("seen 300") if self.seen == 300 else None

    with pytest.raises(AssertionError, match="restored from its state_dict at step 200 fires at step None"):
        check_termination(Forgetful)


class PlainCosine(Alignment):
    """Student tokens matched to teacher tokens with no projector: needs equal widths."""

    @dataclass(kw_only=True, frozen=True)
    class Config:
        block: int = 1

    @classmethod
    def check(cls, config, *, student, teacher):
        if student.hidden_size != teacher.embed_dim:
            raise RecipeError(f"widths differ: {student.hidden_size} and {teacher.embed_dim}")

    def __init__(self, config, *, student, teacher):
        super().__init__()
        self.config, self.teacher_width = config, teacher.embed_dim

    def student_capture(self):
        return Capture(hidden=frozenset({self.config.block}))

    def teacher_request(self):
        return Capture(hidden=frozenset({-1}))

    def forward(self, student, teacher):
        cosine = F.cosine_similarity(student.hidden[self.config.block].float(), teacher.tokens[-1].float(), dim=-1)
        return -cosine.mean(), {}


def test_an_alignment_without_a_projector_is_checked_with_a_teacher_of_the_students_width():
    alignment = check_alignment(PlainCosine)
    assert alignment.teacher_width == 32


def test_an_alignment_refusing_every_default_teacher_fails_the_check_with_its_reasons():
    class Refuses(PlainCosine):
        @classmethod
        def check(cls, config, *, student, teacher):
            raise RecipeError("never fits")

    with pytest.raises(AssertionError, match=r"refuses its example_config for every teacher tried: .*never fits"):
        check_alignment(Refuses)


def test_alignment_check_gives_teacher_tokens_on_the_teachers_token_grid():
    from haste_core import StudentSpec, TeacherSpec

    class Resampled(PlainCosine):
        def forward(self, student, teacher):
            assert teacher.tokens[-1].shape[1] == 16, "teacher tokens on the token grid (4x4)"
            return super().forward(student, teacher)

    student = StudentSpec(name="s", depth=2, hidden_size=8, num_heads=2, grid=4)
    teacher = TeacherSpec(name="t", depth=2, embed_dim=8, num_heads=2, grid=8, token_grid=4)
    assert isinstance(check_alignment(Resampled, student=student, teacher=teacher), Resampled)
