"""Step time of HASTE Phase I, Phase II and training without alignment, side by side in one process.

    python benchmarks/bench_phase_cost.py [--rounds 7] [--batch 4] [--profile-steps 2]      (or: make bench)

The paper's SiT-B/2 setting on the CPU: a SiT-B/2 student on 256 tokens (random 4×32×32 latents), the DINOv2-B
teacher (random weights; 256-px images resized to 224 by the teacher), REPA after block 7 with a 2048-wide
projector and attention distillation on the pairs (4,8) (5,9) (6,10) (7,11), batch 4, fp32. Three trainers take
turns, one step each per round, so machine noise hits all three alike; reported are the medians of the per-round
ratios (paired rounds) with their spread, against the targets Phase II / vanilla ≤ 1.03 and Phase I / vanilla ≤
1.30. First, Phase I's extra time is taken apart: the teacher's forward, the captured attention (the student's
forward and backward with capture minus without), the attention loss with its backward, and REPA's projector and
loss with its backward.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.train.trainer import Trainer

TARGETS = {"Phase II": 1.03, "Phase I": 1.30}  # issue 13: what HASTE may cost over training without alignment
DEVICE = torch.device("cpu")
VANILLA = {
    "run": {"name": "vanilla", "max_steps": 1000000, "log_every": 1000000, "checkpoint_every": 0},
    "data": {"name": "synthetic_latents", "image_shape": [3, 256, 256], "num_items": 64},
    "student": {"name": "sit_b_2"},
    "objective": {"name": "flow"},
    "optimizer": {"lr": 1.0e-4},
    "precision": {"dtype": "fp32"},
    "plugins": [str(Path(__file__).resolve().parent / "synthetic_latents.py")],
}
HASTE = {  # recipes/haste_sit_b2_dinov2b_in256.yaml's alignment
    "teacher": {"name": "dinov2_vitb14", "weights": "none"},
    "alignment": [
        {"name": "repa", "weight": 0.5, "student_block": 7, "teacher_block": -1, "projector_dim": 2048},
        {"name": "attention", "weight": 0.5, "pairs": [[4, 8], [5, 9], [6, 10], [7, 11]], "heads": "first"},
    ],
}


def build(out: Path, name: str, batch: int, termination_step: int | None) -> Trainer:
    raw: dict[str, Any] = {**VANILLA, "run": {**VANILLA["run"], "name": name, "output_dir": str(out)}}
    raw["data"] = {**raw["data"], "global_batch_size": batch}
    if termination_step is not None:
        raw.update(HASTE, termination={"name": "fixed_step", "step": termination_step})
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe, plugins = load_recipe(path)
    return Trainer(recipe, plugins, distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=DEVICE))


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def phase_one_parts(trainer: Trainer, steps: int) -> dict[str, float]:
    """Median seconds of each piece of Phase I's extra work, measured apart on the trainer's own modules."""
    batch = trainer.dataset.finish_batch(next(trainer.stream))
    pair = trainer.objective.training_pair(batch["x"])
    student, stage = trainer.student, trainer.stage
    capture = stage.student_capture()
    x_t, t, cond = pair.x_t, pair.t, batch["cond"]
    parts: dict[str, list[float]] = {key: [] for key in ("teacher", "plain", "captured", "attention", "repa")}
    teacher_out: dict[str, Any] = {}
    for _ in range(steps):
        teacher_out.clear()
        parts["teacher"].append(timed(lambda: teacher_out.update(stage.encode(batch["image"]))))
        parts["plain"].append(timed(lambda: student(x_t, t, cond).pred.square().mean().backward()))

        def captured() -> None:
            out = student(x_t, t, cond, capture=capture)
            loss = out.pred.square().mean() + sum(h.sum() * 0 for h in out.hidden.values())
            loss = loss + sum(a.sum() * 0 for a in out.attn_logits.values())
            loss.backward()

        parts["captured"].append(timed(captured))
        with torch.no_grad():
            out = student(x_t, t, cond, capture=capture)
        for label in ("attention", "repa"):
            leafs = type(out)(
                pred=out.pred,
                hidden={k: v.detach().requires_grad_() for k, v in out.hidden.items()},
                attn_logits={k: v.detach().requires_grad_() for k, v in out.attn_logits.items()},
            )
            alignment = stage.alignments[label]
            parts[label].append(timed(lambda a=alignment, o=leafs, lb=label: a(o, teacher_out[lb])[0].backward()))
        trainer.optimizer.zero_grad(set_to_none=True)
    med = {key: statistics.median(values) for key, values in parts.items()}
    return {
        "teacher forward (DINOv2-B: 12 blocks, attention of 8-11 kept)": med["teacher"],
        "captured attention (student fwd+bwd with capture - without)": med["captured"] - med["plain"],
        "attention loss + its backward": med["attention"],
        "REPA projector + loss + backward": med["repa"],
        "(student fwd+bwd without capture, for scale)": med["plain"],
    }


def profile_top_ops(trainer: Trainer, steps: int, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds (one step of each trainer)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--profile-steps", type=int, default=2, help="Phase I steps taken apart (0: skip)")
    parser.add_argument("--top-ops", action="store_true", help="also print torch.profiler's top operators")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[haste] %(message)s")
    where = f"{torch.get_num_threads()} CPU threads"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        trainers = {
            "Phase I": build(out, "phase1", args.batch, termination_step=1000000),
            "Phase II": build(out, "phase2", args.batch, termination_step=1),
            "vanilla": build(out, "vanilla", args.batch, termination_step=None),
        }
        for trainer in trainers.values():
            trainer.train_step()  # warm-up (and the FLOP count of the first phase)
        trainers["Phase II"].train_step()  # its first Phase II step (the FLOP count of Phase II)
        assert not trainers["Phase II"].stage.teachers, "the Phase II trainer still holds a teacher"
        if args.profile_steps:
            print(f"Phase I's extra work, SiT-B/2 + DINOv2-B, batch {args.batch}, fp32, {where}:")
            for name, seconds in phase_one_parts(trainers["Phase I"], args.profile_steps).items():
                print(f"  {name:<72} {seconds * 1e3:8.0f} ms", flush=True)
            if args.top_ops:
                print(profile_top_ops(trainers["Phase I"], args.profile_steps), flush=True)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                times[name].append(timed(trainer.train_step))
            print(".", end="", flush=True)
    print(f"\nstep time, SiT-B/2 (256 tokens) + DINOv2-B, batch {args.batch}, fp32, {where}, {args.rounds} rounds:")
    for name, values in times.items():
        spread = f"{min(values) * 1e3:.0f}-{max(values) * 1e3:.0f}"
        print(f"  {name:<9} {statistics.median(values) * 1e3:8.0f} ms/step   (rounds: {spread})")
    for name, target in TARGETS.items():
        ratios = [a / b for a, b in zip(times[name], times["vanilla"], strict=True)]
        ratio = statistics.median(ratios)
        verdict = "met" if ratio <= target else "NOT met"
        print(
            f"  {name} / vanilla = {ratio:.3f}   (median of paired rounds; spread {min(ratios):.3f}-"
            f"{max(ratios):.3f}; target <= {target}: {verdict})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
