"""``haste export RUN_OR_CHECKPOINT OUT.safetensors``: a run's EMA student weights, and nothing else; with
``--layout repa|dit`` (OUT.pt) the checkpoint layouts of the reference code, for its own ``generate.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

from haste_core.cli.common import report


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("source", type=Path, help="a run folder, a haste checkpoint, or a REPA/HASTE/DiT checkpoint")
    parser.add_argument("out", type=Path, help="the file to write: .safetensors, or .pt for a reference layout")
    parser.add_argument(
        "--layout", default="safetensors", choices=["safetensors", "repa", "dit"],
        help="safetensors: the EMA weights; repa: REPA/HASTE train.py's checkpoint (model, ema, steps); dit: the "
        "official DiT/SiT release (EMA state dict); the reference's generate.py loads the last two",
    )  # fmt: skip
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="load this local plugin module or .py file (repeatable); the plugins a checkpoint's recipe lists are "
        "never imported from it",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from haste_core.errors import HasteError
    from haste_core.plugins import load_plugins
    from haste_core.weights.export import export, export_reference
    from haste_core.weights.import_checkpoint import head_prefixes

    try:
        if args.layout == "safetensors":
            prefixes = head_prefixes(load_plugins().registry("alignments"))  # installed plugins only
            out = export(args.source, args.out, prefixes)
        else:
            out = export_reference(args.source, args.out, args.layout, args.plugin)
    except HasteError as exc:
        return report(exc)
    print(f"wrote {'EMA student weights' if args.layout == 'safetensors' else f'the {args.layout} layout'} to {out}")
    return 0
