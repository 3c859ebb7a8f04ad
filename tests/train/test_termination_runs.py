"""Termination policies inside real (tiny) runs: watch leaves training unchanged, fade scales the weights, the
gradient probe and alignment health reach TensorBoard, staggered stops release the teacher last, and a resume
across or after a termination trains exactly like an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from haste_data.digits import Digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.train.test_trainer import MetricsSpy, assert_same_training_state, trainer_for

WATCH_ALL = (
    "termination.watch=[{name: plateau, metric: loss/denoise, window: 2, tolerance: 1.0}, "
    "{name: gradient_conflict, every: 2, threshold: 1.0, patience: 1}, {name: fade, start: 1, steps: 2}, "
    "{name: fixed_epoch, epochs: 0.01}, {name: fixed_step, step: 3}, {name: never}]"
)


def fit_logged(trainer):
    spy = MetricsSpy()
    trainer.plugins.pm.register(spy, "spy")
    try:
        trainer.fit()
    finally:
        trainer.plugins.pm.unregister(name="spy")
    return spy.logged


def test_watch_logs_would_fire_steps_without_changing_training(tiny, plugins, tmp_path):
    plain = trainer_for(tiny(f"run.output_dir={tmp_path / 'plain'}"), plugins)
    plain_logged = fit_logged(plain)
    watched = trainer_for(tiny(f"run.output_dir={tmp_path / 'watched'}", WATCH_ALL), plugins)
    watched_logged = fit_logged(watched)

    assert [m["loss/total"] for m in watched_logged] == [m["loss/total"] for m in plain_logged]
    assert_same_training_state(plain, watched)
    assert watched.plan.stopped == plain.plan.stopped == {"repa": 4, "attention": 4}
    would_fire = {
        key.split("/")[-1]: (step, value)
        for step, metrics in enumerate(watched_logged, start=1)
        for key, value in metrics.items()
        if key.startswith("termination/would_fire/")
    }
    # fixed_epoch: 2 of 179 batches ≥ 0.01 epochs; fade: the last positive weight is step 2; the probe (every 2
    # steps) sees a cosine below 1 at once; plateau checks at steps 2 and 4; never never fires.
    assert would_fire == {
        "gradient_conflict": (2, 2.0),
        "fade": (2, 2.0),
        "fixed_epoch": (2, 2.0),
        "fixed_step": (3, 3.0),
        "plateau": (4, 4.0),
    }
    probed = [step for step, m in enumerate(watched_logged, start=1) if "perf/probe_s" in m]
    assert probed == [2]  # watching policies stop probing once they have decided
    health = watched_logged[1]
    assert health["grad/share/denoise"] + health["grad/share/repa"] + health["grad/share/attention"] == pytest.approx(1)
    assert -1 <= health["grad/cos/repa"] <= 1 and health["perf/probe_s"] > 0
    events = EventAccumulator(str(watched.recipe.run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("termination/would_fire/fixed_step")] == [(3, 3.0)]
    assert [e.step for e in events.Scalars("grad/cos/attention")] == [2]


def test_alignment_health_reaches_tensorboard(tiny, plugins):
    trainer = trainer_for(tiny("run.max_steps=3", "run.checkpoint_every=0"), plugins)
    trainer.fit()
    events = EventAccumulator(str(trainer.recipe.run_dir / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    histograms = events.Histograms("align/repa/cosine")
    assert [h.step for h in histograms] == [1, 2, 3]
    values = histograms[-1].histogram_value
    assert values.num == 8 * 16  # a batch of 8 digits, 4×4 tokens each
    assert -1.0 <= values.min <= values.max <= 1.0
    tags = events.Tags()["scalars"]
    assert {"align/attention/pair_1_2/kl", "align/attention/pair_2_3/entropy", "align/attention/pair_1_2"} <= set(tags)
    kl = events.Scalars("align/attention/pair_1_2/kl")[0].value
    assert kl >= 0


def test_fade_scales_the_alignment_weight_each_step(tiny, plugins):
    trainer = trainer_for(tiny("termination={name: fade, start: 1, steps: 4}"), plugins)
    logged = fit_logged(trainer)
    scales = []
    for metrics in logged[:4]:
        aligned = 0.5 * (metrics["align/repa"] + metrics["align/attention"])
        scales.append((metrics["loss/total"] - metrics["loss/denoise"]) / aligned)
    assert scales == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-4)
    assert trainer.plan.stopped == {"repa": 4, "attention": 4}
    assert logged[4]["loss/total"] == logged[4]["loss/denoise"]


def test_fixed_epoch_and_gradient_conflict_stop_runs(tiny, plugins, tmp_path):
    epoch = trainer_for(tiny(f"run.output_dir={tmp_path / 'e'}", "termination={name: fixed_epoch, epochs: 2}",
                             "data.global_batch_size=512"), plugins)  # fmt: skip
    epoch.fit()
    assert epoch.plan.stopped == {"repa": 4, "attention": 4}  # 2 batches per epoch
    conflict = trainer_for(
        tiny(f"run.output_dir={tmp_path / 'c'}", "termination={name: gradient_conflict, every: 3, threshold: 1.0}"),
        plugins,
    )
    conflict.fit()
    assert conflict.plan.stopped == {}  # patience 3 is not reached by step 8
    policy = conflict.plan.policies["run"]
    assert [step for step, _ in policy.cosines] == [3, 6]  # measured every 3 steps, 2 of 3 strikes by step 8
    assert policy.strikes == 2


STAGGERED = [
    "alignment.1.termination={name: fade, start: 1, steps: 2}",  # attention: stops after step 2
    "termination={name: gradient_conflict, every: 2, threshold: 1.0, patience: 3}",  # repa: probes 2, 4, 6
]
RESUME_CASES = {
    "fade-resumed-mid-ramp": ["termination={name: fade, start: 2, steps: 4}"],
    "plateau-state-carried": [
        "termination={name: plateau, metric: loss/denoise, window: 3, tolerance: 0.5, decay: 0.5}"
    ],
    "staggered-between-stops": STAGGERED,
    "watch-state-carried": [
        "termination={name: fixed_step, step: 6}",
        "termination.watch=[{name: gradient_conflict, every: 1, threshold: 1.0, patience: 5}]",
    ],
    "learned-heads-mid-phase-one": ["alignment.1.heads=learned", "termination.step=6"],
}
EXPECTED_STOPS = {
    "fade-resumed-mid-ramp": {"repa": 5, "attention": 5},
    "plateau-state-carried": {"repa": 6, "attention": 6},
    "staggered-between-stops": {"attention": 2, "repa": 6},
    "watch-state-carried": {"repa": 6, "attention": 6},
    "learned-heads-mid-phase-one": {"repa": 6, "attention": 6},
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_with_adaptive_policies_gives_identical_training(tiny, plugins, tmp_path, case):
    settings = RESUME_CASES[case]
    straight = trainer_for(tiny(*settings, f"run.output_dir={tmp_path / 'a'}"), plugins)
    straight.fit()
    trainer_for(tiny(*settings, f"run.output_dir={tmp_path / 'b'}", "run.max_steps=4"), plugins).fit()
    resumed = trainer_for(tiny(*settings, f"run.output_dir={tmp_path / 'b'}"), plugins)
    assert resumed.step == 4
    if case == "staggered-between-stops":  # resumed between the stops: the teacher is built, attention is not
        assert "teacher" in resumed.stage.teachers and list(resumed.stage.alignments) == ["repa"]
    resumed.fit()
    assert_same_training_state(straight, resumed)
    assert straight.plan.stopped == resumed.plan.stopped == EXPECTED_STOPS[case]
    assert straight.plan.state_dict() == resumed.plan.state_dict()
    if case == "watch-state-carried":
        assert straight.plan.would_fire == resumed.plan.would_fire == {"gradient_conflict": 5}


def test_learned_head_mixing_belongs_to_the_alignment(tiny, plugins):
    trainer = trainer_for(
        tiny("alignment.1.heads=learned", "alignment.1.termination={name: fixed_step, step: 2}"), plugins
    )
    mixing = list(trainer.stage.alignments["attention"].mixing)
    groups = {group["name"]: group["params"] for group in trainer.optimizer.param_groups}
    assert [tuple(p.shape) for p in groups["align:attention"]] == [(4, 4), (4, 4)]  # one per pair: digits_vit 4 heads
    assert all(p is q for p, q in zip(groups["align:attention"], mixing, strict=True))
    assert not any(p is q for p in groups["student"] for q in mixing)
    start = [p.detach().clone() for p in mixing]
    trainer.train_step()
    assert all(not torch.equal(p, q) for p, q in zip(mixing, start, strict=True))  # trained
    trainer.save_checkpoint()
    saved = torch.load(trainer.recipe.run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert torch.equal(saved["alignments"]["attention"]["mixing.0"], mixing[0])
    trainer.train_step()  # attention stops after step 2: its mixing goes with its optimiser group and state
    assert "align:attention" not in [group["name"] for group in trainer.optimizer.param_groups]
    assert not any(p is q for p in trainer.optimizer.state for q in mixing)


def test_staggered_stops_release_the_teacher_after_the_last(tiny, plugins):
    trainer = trainer_for(tiny(*STAGGERED), plugins)
    for _ in range(2):
        trainer.train_step()
    assert trainer.plan.active == ["repa"] and "teacher" in trainer.stage.teachers  # repa still needs it
    assert trainer.module.capture.attn == frozenset()  # attention maps are no longer captured
    assert "attention" not in trainer.stage.alignments
    for _ in range(4):
        trainer.train_step()
    assert trainer.plan.stopped == {"attention": 2, "repa": 6} and trainer.stage.teachers == {}
    assert trainer.module.capture is None


def test_phase_two_decodes_no_images(tiny, plugins, monkeypatch):
    decoded: list[int] = []
    original = Digits.__getitem__

    def counting(self, index):
        item = original(self, index)
        decoded.extend([index] if "image" in item else [])
        return item

    monkeypatch.setattr(Digits, "__getitem__", counting)
    trainer = trainer_for(tiny(*STAGGERED), plugins)
    per_step = []
    for _ in range(8):
        before = len(decoded)
        trainer.train_step()
        per_step.append(len(decoded) - before)
    # attention stops after step 2, repa (which still needs the teacher's images) after step 6
    assert per_step == [8] * 6 + [0] * 2


def test_no_probe_runs_in_phase_two(tiny, plugins):
    # a watching policy that can never fire (no cosine is below -1) is still undecided when Phase II starts
    trainer = trainer_for(tiny("termination.watch=[{name: gradient_conflict, every: 2, threshold: -1.0}]"), plugins)
    logged = fit_logged(trainer)
    assert trainer.plan.stopped == {"repa": 4, "attention": 4} and trainer.plan.would_fire == {}
    assert [step for step, m in enumerate(logged, start=1) if "perf/probe_s" in m] == [2, 4]  # not 6, 8
    assert trainer.plan.probe_every() == 0
