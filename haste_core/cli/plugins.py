"""``haste plugins``: every installed plugin, where it comes from, its hooks and the components it registered."""

from __future__ import annotations

import argparse
from typing import Any

from haste_core.cli.common import report


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="also load this local plugin module or .py file (repeatable), as a recipe's plugins: list does",
    )  # fmt: skip


def format_listing(records: list[dict[str, Any]]) -> str:
    """Two or more lines per plugin: name and source, its hooks, then one line per family it registered into."""
    lines = []
    for record in records:
        lines.append(f"{record['name']}  [{record['source']}]")
        lines.append(f"  hooks: {', '.join(record['hooks']) or '-'}")
        for family, names in record["components"].items():
            lines.append(f"  {family}: {', '.join(names)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from haste_core.errors import PluginError
    from haste_core.plugins import load_plugins

    try:
        plugins = load_plugins(args.plugin)
    except PluginError as exc:
        return report(exc)
    records = plugins.describe()
    print(format_listing(records))
    total = sum(len(registry) for registry in plugins.registries.values())
    print(f"\n{len(records)} plugins, {total} components")
    return 0
