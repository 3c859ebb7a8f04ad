"""``haste sweep-termination RECIPE --at K1,K2,... [key.path=value ...]``: when should this run stop aligning?

Trains one aligned parent run (the recipe with ``termination: {name: never}``, its ``termination.watch`` kept),
forks it at every K into a run that stops aligning after step K and trains on to the same budget, trains the
recipe without alignment, scores every run and writes ``sweep.csv``, ``sweep.md`` and ``sweep.png`` under
``<run.output_dir>/<run.name>-sweep/`` (see docs/termination.md). Under torchrun every run uses all processes.

Scores (lower is better): ``--score fid`` reads the recipe's in-training FID (its ``eval`` section); ``--score
MODULE:FUNCTION`` imports that module and calls FUNCTION(trainer) -> float on each finished run (e.g.
``haste_data.digit_scenes_score:frechet_distance`` for the digit-scenes miniature).
"""

from __future__ import annotations

import argparse
import importlib

from haste_core.cli.common import add_recipe_arguments, report, setup_logging


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--at", required=True, help="comma-separated steps K after which a branch stops aligning")
    parser.add_argument("--score", default="fid", help="fid (the recipe's eval section) or MODULE:FUNCTION")


def parse_steps(text: str) -> list[int]:
    from haste_core.errors import HasteError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HasteError(f"--at takes comma-separated whole steps such as 250,500,1000; got {text!r}") from None


def scorer(name: str, recipe):
    """The score function ``--score`` names: the in-training FID, or an imported MODULE:FUNCTION."""
    from haste_core.errors import HasteError

    if name == "fid":
        if not recipe.eval.every:
            raise HasteError(
                "--score fid reads the recipe's in-training FID, but its eval section is off; set eval.every and "
                "eval.reference, or give --score MODULE:FUNCTION"
            )
        return lambda trainer: trainer.evaluator.evaluate(trainer.ema.model, trainer.objective, trainer.dataset)[
            "eval/fid"
        ]
    module_name, sep, function = name.partition(":")
    if not sep or not module_name or not function:
        raise HasteError(f"--score takes 'fid' or MODULE:FUNCTION; got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HasteError(f"--score {name}: cannot import {module_name} ({exc})") from None
    if not callable(getattr(module, function, None)):
        raise HasteError(f"--score {name}: {module_name} has no function {function!r}")
    return getattr(module, function)


def run(args: argparse.Namespace) -> int:
    from haste_core import distributed
    from haste_core.config.recipe import load_recipe
    from haste_core.errors import HasteError

    setup_logging()
    try:
        recipe, plugins = load_recipe(args.recipe, args.overrides)
        score = scorer(args.score, recipe)
        from haste_core.train import sweep

        stops = sweep.check_stops(recipe, parse_steps(args.at))
    except HasteError as exc:
        return report(exc)

    def work(env: distributed.DistEnv) -> None:
        result = sweep.sweep_termination(recipe, plugins, env, stops, score)
        if env.is_main:
            print((result.folder / "sweep.md").read_text(), end="")
            print(f"wrote {result.folder / 'sweep.csv'}, sweep.md and sweep.png")

    return distributed.run_command(recipe.run.device, work)
