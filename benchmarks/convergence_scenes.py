"""The convergence miniature over seeds: vanilla vs REPA vs HASTE on 16×16 digit scenes (docs/benchmarks.md).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/convergence_scenes.py [--seeds 0,1,2] [--steps 1200]
    (or: make bench-convergence)

recipes/scenes_{vanilla,repa,haste}.yaml train with the same budget, one process each, once per seed (the seed
sets the initial weights, the data order and the noise; the 512 training scenes are the same for every seed).
Every ``--every`` steps the EMA student draws 300 class-balanced scenes (Euler, 16 steps, no guidance, the same
noise every time) that the independent scorer (``haste_data.digit_scenes_score``: a CNN trained on scenes of
held-out digits only) turns into a class accuracy and a Fréchet distance to held-out scenes (FD, lower is
better). Rows are appended to ``<out>/convergence.csv`` as they come, so an interrupted run keeps what it did;
``--from-csv`` re-summarises and re-plots a CSV.

The summary gives, per method, the final FD and accuracy as mean ± standard deviation and [min, max] over seeds,
and the steps each seed needs to reach fixed FD levels; a method is called faster or better only when its
[min, max] range over seeds does not overlap vanilla's.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from haste_data.digit_scenes_score import SAMPLE_STEPS, SAMPLES, draw, sample_inputs, scorer

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
METHODS = {"vanilla": "scenes_vanilla.yaml", "REPA": "scenes_repa.yaml", "HASTE": "scenes_haste.yaml"}
QUIET = ["run.log_every=1000000", "run.checkpoint_every=0", "run.sample_every=0", "run.resume=never"]
FD_LEVELS = (60.0, 40.0, 30.0, 20.0)
FIELDS = ["method", "seed", "step", "accuracy", "fd"]


def build(method: str, out: Path, seed: int, steps: int, stop: int | None) -> Trainer:
    changes = [f"run.output_dir={out}", f"run.name={method}_seed{seed}", f"run.seed={seed}", f"run.max_steps={steps}"]
    if stop is not None and method == "HASTE":
        changes.append(f"termination.step={stop}")
    recipe, plugins = load_recipe(REPO / "recipes" / METHODS[method], [*changes, *QUIET])
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    return Trainer(recipe, plugins, env)


def haste_stop_step(stop: int | None = None) -> int:
    recipe, _ = load_recipe(REPO / "recipes" / METHODS["HASTE"])
    return stop if stop is not None else recipe.termination.config.step


def read_rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return [{"method": r["method"], "seed": int(r["seed"]), "step": int(r["step"]),
                 "accuracy": float(r["accuracy"]), "fd": float(r["fd"])} for r in csv.DictReader(handle)]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (at least 3 for a spread)")
    parser.add_argument("--steps", type=int, default=1200, help="training budget per run (the recipes' 1200)")
    parser.add_argument("--stop", type=int, default=None, help="HASTE's last aligned step (default: the recipe's)")
    parser.add_argument("--every", type=int, default=100, help="score the EMA student every this many steps")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "convergence_scenes")
    parser.add_argument("--fd-levels", default=",".join(f"{v:g}" for v in FD_LEVELS), help="FD levels to reach")
    parser.add_argument("--from-csv", type=Path, default=None, help="only re-summarise and re-plot a CSV this wrote")
    args = parser.parse_args()
    levels = [float(v) for v in args.fd_levels.split(",") if v]
    logging.basicConfig(level=logging.INFO, format="[haste] %(message)s")
    if args.from_csv:
        rows = read_rows(args.from_csv)
        if not args.from_csv.with_suffix(".png").is_file():  # the run's own plot (its settings in the title) stays
            seeds = sorted({row["seed"] for row in rows})
            title = (f"digit scenes 16x16, sit_micro_4, batch 64, HASTE stops after {haste_stop_step(args.stop)}, "
                     f"seeds {seeds}; {SAMPLES} EMA samples (Euler {SAMPLE_STEPS}, no guidance); band: min-max over "
                     f"seeds ({args.from_csv.name})")  # fmt: skip
            plot(rows, args.from_csv.with_suffix(".png"), title, haste_stop_step(args.stop))
        summarise(rows, levels)
        return 0
    methods = [m for m in args.methods.split(",") if m]
    if unknown := [m for m in methods if m not in METHODS]:
        print(f"unknown method(s) {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "convergence.csv"
    done = read_rows(csv_path) if csv_path.is_file() else []
    finished = {(r["method"], r["seed"]) for r in done if r["step"] == args.steps}
    rows = [r for r in done if (r["method"], r["seed"]) in finished]  # unfinished runs start over
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)

    judge = scorer()
    print(f"scorer: accuracy {100 * judge.accuracy:.1f}% on scenes of digits it never saw", flush=True)
    noise, labels = sample_inputs()
    began_all = time.perf_counter()
    for seed in seeds:  # seed-major: a cut-short run still has every method for the seeds it finished
        for method in methods:
            if (method, seed) in finished:
                continue
            trainer = build(method, args.out / "runs", seed, args.steps, args.stop)
            began = time.perf_counter()
            while trainer.step < args.steps:
                for _ in range(min(args.every, args.steps - trainer.step)):
                    trainer.train_step()
                accuracy, fd = judge.score(draw(trainer, noise, labels), labels)
                row = {"method": method, "seed": seed, "step": trainer.step, "accuracy": accuracy, "fd": fd}
                rows.append(row)
                with csv_path.open("a", newline="") as handle:
                    csv.DictWriter(handle, fieldnames=FIELDS).writerow(row)
                print(f"  {method:<8} seed {seed} step {trainer.step:5d}  accuracy {100 * accuracy:5.1f}%  "
                      f"FD {fd:7.2f}  ({time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip
            del trainer
    print(f"all runs: {time.perf_counter() - began_all:.0f} s", flush=True)
    title = (f"digit scenes 16x16, sit_micro_4, batch 64, {args.steps} steps, HASTE stops after "
             f"{haste_stop_step(args.stop)}, seeds {args.seeds}; {SAMPLES} EMA samples every {args.every} "
             f"steps (Euler {SAMPLE_STEPS}, no guidance); band: min-max over seeds")  # fmt: skip
    plot(rows, args.out / "convergence.png", title, haste_stop_step(args.stop))
    summarise(rows, levels)
    print(f"wrote {csv_path} and {args.out / 'convergence.png'}")
    return 0


def curves(rows: list[dict], method: str, key: str) -> dict[int, list[float]]:
    """step -> the values of every seed of ``method`` at that step."""
    out: dict[int, list[float]] = {}
    for row in rows:
        if row["method"] == method:
            out.setdefault(row["step"], []).append(row[key])
    return out


def plot(rows: list[dict], path: Path, title: str, stop_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in dict.fromkeys(row["method"] for row in rows):
        for axis, key, scale in ((axes[0], "fd", 1), (axes[1], "accuracy", 100)):
            by_step = curves(rows, method, key)
            steps = sorted(by_step)
            mean = [scale * statistics.fmean(by_step[s]) for s in steps]
            (line,) = axis.plot(steps, mean, marker="o", markersize=3, label=f"{method} (mean)")
            axis.fill_between(steps, [scale * min(by_step[s]) for s in steps], [scale * max(by_step[s]) for s in steps],
                              color=line.get_color(), alpha=0.2)  # fmt: skip
    for axis in axes:
        axis.axvline(stop_step, color="grey", linestyle="--", label=f"HASTE stops aligning (step {stop_step})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set(xlabel="training step", ylabel="FD to held-out scenes (scorer features), lower is better")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="training step", ylabel="class accuracy of samples (%)")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [scale * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    low, high = min(values), max(values)
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def first_step(rows: list[dict], method: str, seed: int, level: float) -> int | None:
    for row in rows:
        if row["method"] == method and row["seed"] == seed and row["fd"] <= level:
            return row["step"]
    return None


def separated(a: list[float], b: list[float]) -> bool:
    return max(a) < min(b) or max(b) < min(a)


def summarise(rows: list[dict], levels: list[float]) -> None:
    """Final quality with its spread, steps to fixed FD levels per seed, and which differences are separated."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    base = "vanilla" if "vanilla" in methods else methods[0]
    last = max(row["step"] for row in rows)
    seeds = {m: sorted({r["seed"] for r in rows if r["method"] == m and r["step"] == last}) for m in methods}
    final = {m: {k: [r[k] for r in rows if r["method"] == m and r["step"] == last] for k in ("fd", "accuracy")}
             for m in methods}  # fmt: skip
    print(f"\nat step {last} (mean ± sd [min, max] over seeds; 'separated': the [min, max] ranges do not overlap "
          f"{base}'s)")  # fmt: skip
    print(f"| method | seeds | final FD | final accuracy (%) | FD vs {base} |")
    print("|---|---|---|---|---|")
    for m in methods:
        verdict = "-" if m == base else ("separated" if separated(final[m]["fd"], final[base]["fd"]) else "overlaps")
        print(f"| {m} | {len(seeds[m])} | {spread(final[m]['fd'])} | {spread(final[m]['accuracy'], 100, 1)} | "
              f"{verdict} |")  # fmt: skip
    print(f"\nsteps to reach FD <= level, per seed ('-': not within {last} steps); mean [min, max] where all reached")
    print("| FD level | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for level in levels:
        cells, reached = [], {}
        for m in methods:
            steps = [first_step(rows, m, s, level) for s in seeds[m]]
            text = ", ".join("-" if s is None else str(s) for s in steps)
            if steps and all(s is not None for s in steps):
                reached[m] = [float(s) for s in steps]
                text += f" (mean {statistics.fmean(steps):.0f})"
            cells.append(text)
        for i, m in enumerate(methods):
            if m != base and m in reached and base in reached and separated(reached[m], reached[base]):
                faster = max(reached[m]) < min(reached[base])
                cells[i] += f" **{'faster' if faster else 'slower'}, separated**"
        print(f"| {level:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
