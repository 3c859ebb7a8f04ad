"""``haste export RUN_OR_CHECKPOINT OUT.safetensors``: a run's EMA student weights, and nothing else."""

from __future__ import annotations

import argparse
from pathlib import Path

from haste_core.cli.common import report


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("source", type=Path, help="a run folder, a haste checkpoint, or a REPA/HASTE/DiT checkpoint")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")


def run(args: argparse.Namespace) -> int:
    from haste_core.errors import HasteError
    from haste_core.plugins import load_plugins
    from haste_core.weights.export import export
    from haste_core.weights.import_checkpoint import head_prefixes

    try:
        prefixes = head_prefixes(load_plugins().registry("alignments"))  # installed plugins only
        out = export(args.source, args.out, prefixes)
    except HasteError as exc:
        return report(exc)
    print(f"wrote EMA student weights to {out}")
    return 0
