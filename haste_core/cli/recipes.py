"""``haste recipes``: the shipped recipes, one line each; ``haste recipes cp NAME [DEST]`` copies one to edit.

haste recipes cp quickstart my_run.yaml
haste run my_run.yaml
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from haste_core.cli.common import report


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("action", nargs="?", choices=["list", "cp"], default="list", help="list, or cp (copy one)")
    parser.add_argument("name", nargs="?", default=None, help="cp: the shipped recipe to copy (e.g. quickstart)")
    parser.add_argument("dest", nargs="?", default=None, help="cp: where to write it; default ./NAME.yaml")
    parser.add_argument("--force", action="store_true", help="cp: overwrite DEST if it exists")


def run(args: argparse.Namespace) -> int:
    from haste_core.config import shipped
    from haste_core.errors import HasteError

    recipes = shipped.shipped()
    if args.action == "list":
        if args.name is not None:
            return report(HasteError(f"'haste recipes list' takes no name; to copy one: haste recipes cp {args.name}"))
        width = max((len(name) for name in recipes), default=0)
        for name, path in recipes.items():
            print(f"{name:<{width}}  {shipped.summary(path)}")
        print(f"\n{len(recipes)} recipes; copy one with: haste recipes cp NAME [DEST]")
        return 0
    if args.name is None:
        return report(HasteError(f"say which recipe to copy: haste recipes cp NAME [DEST]; NAME is one of "
                                 f"{', '.join(recipes)}"))  # fmt: skip
    source = shipped.find(args.name)
    if source is None:
        return report(HasteError(f"no shipped recipe is called {args.name!r}; they are: {', '.join(recipes)}"))
    dest = Path(args.dest) if args.dest else Path(f"{source.stem}{shipped.SUFFIX}")
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not args.force:
        return report(HasteError(f"{dest} already exists; give another DEST or add --force to overwrite it"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    print(f"copied {source.stem} to {dest}; run it with: haste run {dest}")
    return 0
