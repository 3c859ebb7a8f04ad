"""A termination sweep: when should this run stop aligning?

One aligned parent run (the recipe with ``termination: {name: never}``, its ``watch`` list kept) trains to the
budget and saves a checkpoint at every K asked for. Each K gets a branch that forks the parent's step-K
checkpoint (``haste_core.train.fork``: referenced by path, not copied), stops every alignment there and trains on
without alignment to the same budget. A run without alignment (the recipe without teachers and alignments) gives
the other end. Every run is scored by a scorer (lower is better: the recipe's in-training FID, or a function
the user names), and the sweep writes ``sweep.csv``, ``sweep.md`` and ``sweep.png`` (quality against K, with
the steps at which the parent's watching policies would have fired).

Layout: ``<run.output_dir>/<run.name>-sweep/{parent,never_align,stop_<K>}/`` (each an ordinary run folder) and
the tables and plot next to them. Run again, it resumes every unfinished run and rescores the finished ones.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haste_core import distributed
from haste_core.config.recipe import Recipe, validate
from haste_core.distributed import DistEnv
from haste_core.errors import HasteError
from haste_core.plugins import Plugins
from haste_core.train import fork, run_folder
from haste_core.train.trainer import Trainer
from haste_core.weights import checkpoint

log = logging.getLogger("haste")

Scorer = Callable[[Trainer], float]  # a finished run's quality, lower is better


@dataclass(frozen=True)
class SweepRow:
    """One run of the sweep: ``stop`` is the last aligned step (0: never aligned; None: aligned to the end)."""

    name: str
    stop: int | None
    score: float
    run_dir: Path


@dataclass(frozen=True)
class SweepResult:
    rows: list[SweepRow]
    would_fire: dict[str, int]  # watching policy -> step after which it would have stopped the parent
    folder: Path


def sweep_folder(recipe: Recipe) -> Path:
    return Path(recipe.run.output_dir) / f"{recipe.run.name}-sweep"


def check_stops(recipe: Recipe, stops: Sequence[int]) -> list[int]:
    """The fork steps, sorted; each must leave Phase II steps within the budget."""
    if not recipe.alignments:
        raise HasteError(f"{recipe.source} has no alignment, so there is nothing to stop; sweep an aligned recipe")
    budget = recipe.run.max_steps
    bad = [k for k in stops if not 0 < k < budget]
    if bad or not stops:
        raise HasteError(
            f"--at needs steps between 1 and {budget - 1} (run.max_steps is {budget}); got {list(stops) or 'none'}"
        )
    return sorted(set(stops))


def derived(recipe: Recipe, plugins: Plugins, env: DistEnv, name: str, change: Callable[[dict], None]) -> Recipe:
    """The recipe as a run of the sweep: its folder under the sweep's, plus ``change`` applied to its data."""
    raw = copy.deepcopy(recipe.to_dict())
    raw["run"].update(output_dir=str(sweep_folder(recipe)), name=name, resume="auto")
    change(raw)
    return validate(raw, plugins, world_size=env.world_size, source=recipe.source)


def _acting(termination: dict[str, Any]) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        watch = (raw.get("termination") or {}).get("watch")
        raw["termination"] = {**termination, **({"watch": watch} if watch else {})}
        for node in raw.get("alignment") or []:
            node.pop("termination", None)

    return change


def _no_alignment(raw: dict) -> None:
    for key in ("teachers", "alignment", "termination"):
        raw.pop(key, None)


def train(recipe: Recipe, plugins: Plugins, env: DistEnv, score: Scorer, parent: Path | None, step: int = 0) -> Any:
    """Train (or resume, or find finished) one run of the sweep; return its trainer and score."""
    if env.is_main and not (recipe.run_dir / run_folder.RECIPE_FILE).is_file():
        run_folder.write_recipe(recipe)
        if parent is not None:
            fork.write(recipe.run_dir, parent, step)
    distributed.barrier()
    trainer = Trainer(recipe, plugins, env, resume_from=run_folder.resume_source(recipe))
    trainer.fit()
    value = float(score(trainer))
    log.info(f"sweep: {recipe.run.name}: score {value:.4f}")
    return trainer, value


def sweep_termination(
    recipe: Recipe, plugins: Plugins, env: DistEnv, stops: Sequence[int], score: Scorer
) -> SweepResult:
    """Run the parent, the run without alignment and one branch per K; write the table and the plot."""
    stops = check_stops(recipe, stops)
    folder = sweep_folder(recipe)

    def with_checkpoints(raw: dict) -> None:
        _acting({"name": "never"})(raw)
        raw["run"].update(checkpoint_every=math.gcd(*stops), keep_checkpoints=0)

    parent_recipe = derived(recipe, plugins, env, "parent", with_checkpoints)
    parent, parent_score = train(parent_recipe, plugins, env, score, None)
    would_fire = dict(parent.plan.would_fire)
    del parent
    rows = []
    _, value = train(derived(recipe, plugins, env, "never_align", _no_alignment), plugins, env, score, None)
    rows.append(SweepRow("never_align", 0, value, folder / "never_align"))
    for k in stops:
        branch = derived(recipe, plugins, env, f"stop_{k}", _acting({"name": "fixed_step", "step": k}))
        _, value = train(branch, plugins, env, score, checkpoint.find_step(parent_recipe.run_dir, k), k)
        rows.append(SweepRow(branch.run.name, k, value, branch.run_dir))
    rows.append(SweepRow("parent", None, parent_score, parent_recipe.run_dir))
    result = SweepResult(rows=rows, would_fire=would_fire, folder=folder)
    if env.is_main:
        write_tables(result, recipe)
        plot(result, recipe, folder / "sweep.png")
    distributed.barrier()
    return result


def _stop_text(row: SweepRow) -> str:
    if row.stop is None:
        return "never (aligned to the end)"
    return "never (no alignment)" if row.stop == 0 else str(row.stop)


def write_tables(result: SweepResult, recipe: Recipe) -> None:
    """``sweep.csv`` (run, last aligned step, score, folder) and ``sweep.md`` (the same, and the watch steps)."""
    with (result.folder / "sweep.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "last_aligned_step", "score", "run_dir"])
        for row in result.rows:
            writer.writerow([row.name, "" if row.stop is None else row.stop, f"{row.score:.6g}", row.run_dir])
    best = min(result.rows, key=lambda row: row.score)
    fired = sorted(result.would_fire.items(), key=lambda item: item[1])
    watched = ", ".join(f"{name} after step {step}" for name, step in fired) or "none fired (or none watched)"
    lines = [
        f"Termination sweep of {recipe.source} ({recipe.run.max_steps} steps; score: lower is better)",
        "",
        "| run | last aligned step | score |",
        "|---|---|---|",
        *[f"| {row.name} | {_stop_text(row)} | {row.score:.4g}{' (best)' if row is best else ''} |"
          for row in result.rows],
        "",
        f"Where the parent's watching policies would have fired: {watched}",
    ]  # fmt: skip
    (result.folder / "sweep.md").write_text("\n".join(lines) + "\n")


def plot(result: SweepResult, recipe: Recipe, path: Path) -> None:
    """Score against the last aligned step; the never-stop end sits at the budget; watch steps as lines."""
    try:
        import matplotlib
    except ImportError:
        log.warning("sweep: no plot (matplotlib is not installed: pip install matplotlib); the tables are written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = recipe.run.max_steps
    xs = [budget if row.stop is None else row.stop for row in result.rows]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(xs, [row.score for row in result.rows], marker="o", color="black")
    for x, row in zip(xs, result.rows, strict=True):
        axis.annotate(f"{row.score:.3g}", (x, row.score), textcoords="offset points", xytext=(0, 6), ha="center",
                      fontsize=7)  # fmt: skip
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, step) in enumerate(sorted(result.would_fire.items(), key=lambda item: item[1])):
        axis.axvline(step, linestyle="--", color=colours[index % len(colours)], label=f"{name} would fire ({step})")
    axis.set_xticks(xs, [("0\nnever align" if x == 0 else f"{x}\nnever stop" if x == budget else str(x)) for x in xs])
    axis.set(xlabel="last aligned step K (then denoising only, to the same budget)", ylabel="score (lower is better)")
    axis.grid(alpha=0.3)
    if result.would_fire:
        axis.legend(fontsize=7)
    axis.set_title(f"termination sweep: {Path(recipe.source).name}, {budget} steps", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
