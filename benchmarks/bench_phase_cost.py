"""Step time of Phase I, Phase II and training without alignment, measured side by side in one process.

    python benchmarks/bench_phase_cost.py [--rounds 10] [--steps 15] [--big-rounds 6] [--big-batch 1]
                                                                            (or: make bench)

Digits: three trainers are built from the digits recipes: quickstart held in Phase I, quickstart after its
termination (Phase II), and digits_vanilla. They take turns: each round runs ``--steps`` steps of each, so that
machine noise hits all three alike. SiT-B/2: a SiT-B/2 student on 256 tokens (random 4×32×32 latents from
``synthetic_latents.py``, batch ``--big-batch``), once terminated after one step aligned with repa + attention
(Phase II) and once without alignment, one step each per round (``--big-rounds``; 0 skips it). Reported: median
ms/step over rounds and the Phase II / vanilla ratios (target ≤ 1.03: after termination HASTE must cost what
training without alignment costs). Runs on CUDA when available, else on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
QUIET = ["run.log_every=1000000", "run.checkpoint_every=0", "run.sample_every=0", "run.max_steps=1000000"]
TARGET_RATIO = 1.03  # issue 5: Phase II may cost at most 3 % more than vanilla
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# SiT-B/2 on 256 tokens, aligned as HASTE aligns SiT-B (digits_vit stands in for DINOv2:
# 4 blocks, 4 heads, resampled to the student's 16×16 grid, random weights since only the cost matters here).
BIG_VANILLA = {
    "run": {"name": "big_vanilla", "max_steps": 1000000, "log_every": 1000000, "checkpoint_every": 0},
    "data": {"name": "synthetic_latents"},
    "student": {"name": "sit_b_2"},
    "objective": {"name": "flow"},
    "optimizer": {"lr": 1.0e-4},
    "precision": {"dtype": "bf16" if DEVICE.type == "cuda" else "fp32"},
    "plugins": [str(Path(__file__).resolve().parent / "synthetic_latents.py")],
}
BIG_ALIGNED = {
    "teacher": {"name": "digits_vit", "weights": "none"},
    "alignment": [
        {"name": "repa", "student_block": 3, "teacher_block": -1},
        {"name": "attention", "pairs": [[4, 2], [5, 3]], "heads": "first"},
    ],
    "termination": {"name": "fixed_step", "step": 1},
}


def build(recipe: str, out: Path, name: str, *overrides: str) -> Trainer:
    path = REPO / "recipes" / recipe
    loaded, plugins = load_recipe(path, [f"run.output_dir={out}", f"run.name={name}", *QUIET, *overrides])
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=DEVICE)
    return Trainer(loaded, plugins, env)


def build_big(out: Path, name: str, batch: int, aligned: bool) -> Trainer:
    raw = {**BIG_VANILLA, **(BIG_ALIGNED if aligned else {})}
    raw = {**raw, "run": {**raw["run"], "name": name, "output_dir": str(out)}}
    raw["data"] = {**raw["data"], "global_batch_size": batch}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    loaded, plugins = load_recipe(path)
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=DEVICE)
    return Trainer(loaded, plugins, env)


def compare(trainers: dict[str, Trainer], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each trainer, per round; the trainers take turns within every round."""
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            times[name].append(time_steps(trainer, steps))
        print(".", end="", flush=True)
    return times


def report(title: str, times: dict[str, list[float]], phase2: str, vanilla: str) -> None:
    print(f"\n{title}:")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        spread = f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f}"
        print(f"  {name:<36} {median * 1e3:9.1f} ms/step   (rounds: {spread})")
    per_round = [b / c for b, c in zip(times[phase2], times[vanilla], strict=True)]
    ratio = medians[phase2] / medians[vanilla]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"  Phase II / vanilla = {ratio:.3f}   (per round {min(per_round):.3f}-{max(per_round):.3f}, median "
        f"{statistics.median(per_round):.3f}; target <= {TARGET_RATIO}: {verdict})"
    )


def time_steps(trainer: Trainer, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - started) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=15, help="steps per trainer per round")
    parser.add_argument("--big-rounds", type=int, default=6, help="rounds of the SiT-B/2 comparison (0: skip it)")
    parser.add_argument("--big-batch", type=int, default=1 if DEVICE.type == "cpu" else 32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[haste] %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        print("building trainers (the digits teacher trains once if it is not cached yet)...", flush=True)
        trainers = {
            "Phase I (quickstart, aligned)": build("quickstart.yaml", out, "phase1", "termination.step=1000000"),
            "Phase II (quickstart, terminated)": build("quickstart.yaml", out, "phase2", "termination.step=1"),
            "vanilla (digits_vanilla)": build("digits_vanilla.yaml", out, "vanilla"),
        }
        for trainer in trainers.values():
            time_steps(trainer, 10)  # warm-up; also takes quickstart/phase2 past its termination
        assert not trainers["Phase II (quickstart, terminated)"].teachers, "Phase II trainer still has a teacher"
        times = compare(trainers, args.rounds, args.steps)
        batch = next(iter(trainers.values())).recipe.data.global_batch_size
        del trainers
        big_times = {}
        if args.big_rounds:
            big = {
                "Phase II (SiT-B/2, terminated)": build_big(out, "big_phase2", args.big_batch, aligned=True),
                "vanilla (SiT-B/2)": build_big(out, "big_vanilla", args.big_batch, aligned=False),
            }
            for trainer in big.values():
                time_steps(trainer, 2)  # warm-up; takes the Phase II trainer past its one aligned step
            assert not big["Phase II (SiT-B/2, terminated)"].teachers, "Phase II trainer still has a teacher"
            big_times = compare(big, args.big_rounds, 1)
    where = f"{torch.get_num_threads()} CPU threads" if DEVICE.type == "cpu" else torch.cuda.get_device_name(DEVICE)
    title = f"digits step time on {where}, batch {batch}, {args.rounds} rounds x {args.steps} steps"
    report(title, times, "Phase II (quickstart, terminated)", "vanilla (digits_vanilla)")
    medians = {name: statistics.median(values) for name, values in times.items()}
    phase1 = medians["Phase I (quickstart, aligned)"] / medians["vanilla (digits_vanilla)"]
    print(f"  Phase I / vanilla  = {phase1:.3f}")
    if big_times:
        title = f"SiT-B/2 (256 tokens) step time on {where}, batch {args.big_batch}, {args.big_rounds} rounds x 1 step"
        report(title, big_times, "Phase II (SiT-B/2, terminated)", "vanilla (SiT-B/2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
