"""``haste prefetch RECIPE [key.path=value ...] [--check]``: fetch every weight a recipe needs into the caches.

Run it on a machine with internet (a cluster's login node), then train with ``HF_HUB_OFFLINE=1``. Exit status: 0
when everything is (now) in the cache, 1 when ``--check`` found something missing, 2 on a recipe error or a
failed download (offline: at once, saying why).
"""

from __future__ import annotations

import argparse

from haste_core.cli.common import add_recipe_arguments, report


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--check", action="store_true", help="download nothing; report what is missing (exit 1)")


def run(args: argparse.Namespace) -> int:
    from haste_core.config.recipe import load_recipe
    from haste_core.errors import HasteError
    from haste_core.weights.prefetch import prefetch

    try:
        recipe, plugins = load_recipe(args.recipe, args.overrides, world_size=1)
        return prefetch(recipe, plugins, check=args.check)
    except HasteError as exc:
        return report(exc)
