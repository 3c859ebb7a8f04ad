"""Step time of Phase I, Phase II and training without alignment, measured side by side in one process.

    python benchmarks/bench_phase_cost.py [--rounds 12] [--steps 25]      (or: make bench)

Three trainers are built from the digits recipes: quickstart held in Phase I, quickstart after its termination
(Phase II), and digits_vanilla. They take turns: each round runs ``--steps`` steps of each, so that machine
noise hits all three alike. Reported: median ms/step over rounds and the Phase II / vanilla ratio (target
≤ 1.05: after termination HASTE must cost what training without alignment costs).
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

from haste_core import distributed
from haste_core.recipe import load_recipe
from haste_core.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
QUIET = ["run.log_every=1000000", "run.checkpoint_every=0", "run.sample_every=0", "run.max_steps=1000000"]
TARGET_RATIO = 1.05  # issue 2: Phase II may cost at most 5 % more than vanilla


def build(recipe: str, out: Path, name: str, *overrides: str) -> Trainer:
    path = REPO / "recipes" / recipe
    loaded, plugins = load_recipe(path, [f"run.output_dir={out}", f"run.name={name}", *QUIET, *overrides])
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    return Trainer(loaded, plugins, env)


def time_steps(trainer: Trainer, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - started) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=25, help="steps per trainer per round")
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
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                times[name].append(time_steps(trainer, args.steps))
            print(".", end="", flush=True)
    batch = next(iter(trainers.values())).recipe.data.global_batch_size
    threads = torch.get_num_threads()
    print(f"\nstep time on {threads} CPU threads, batch {batch}, {args.rounds} rounds x {args.steps} steps:")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        spread = f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f}"
        print(f"  {name:<36} {median * 1e3:7.1f} ms/step   (rounds: {spread})")
    phase1, phase2, vanilla = medians.values()
    per_round = [b / c for b, c in zip(*(times[n] for n in list(times)[1:]), strict=True)]
    ratio = phase2 / vanilla
    print(f"  Phase I / vanilla  = {phase1 / vanilla:.3f}")
    print(
        f"  Phase II / vanilla = {ratio:.3f}   (per round {min(per_round):.3f}-{max(per_round):.3f}; "
        f"target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
