"""What the verbs share: rank-aware logging, the recipe arguments, and printing a user error."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from haste_core.errors import HasteError


def setup_logging() -> None:
    """``[haste] message`` lines: INFO on rank 0, warnings only on the other ranks."""
    from haste_core import distributed

    level = logging.INFO if distributed.env_rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[haste] %(message)s")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe file, or the name of a shipped recipe (haste recipes lists them)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="settings changed on the command line, parsed as YAML (optimizer.lr=3e-4, alignment.1.weight=0.3)",
    )


def report(exc: HasteError) -> int:
    """Print a user error as one paragraph (rank 0 only) and give exit status 2."""
    from haste_core import distributed

    if distributed.env_rank() == 0:
        print(f"error: {exc}", file=sys.stderr)
    return 2
