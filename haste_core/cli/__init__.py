"""The ``haste`` command: one verb per program (``haste run``, ``haste sample``, ...).

``haste`` alone lists the verbs; ``haste VERB --help`` shows every flag of a verb with its default. Each verb
lives in its own module here, imports nothing heavy until it runs, and returns an exit status: 0 on success, 2 on
a user error (printed as one paragraph, without a traceback). Library modules never import from this package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from haste_core import __version__

# verb -> (module in this package, one line for `haste --help`)
VERBS = {
    "run": ("run", "train from a recipe (under torchrun: one process per GPU)"),
    "check": ("run", "validate a recipe and print it resolved; starts nothing"),
    "sample": ("sample", "generate images from a checkpoint: PNGs and the ADM .npz"),
    "evaluate": ("evaluate", "score generated images: FID, sFID, Inception Score, precision, recall"),
    "prepare": ("prepare", "turn ImageNet or MS-COCO into a prepared folder of latents"),
    "prefetch": ("prefetch", "fetch every weight a recipe needs into the caches (or --check what is missing)"),
    "export": ("export", "write a run's EMA student weights as safetensors"),
    "sweep-termination": ("sweep", "when to stop aligning: fork one aligned run at each K, score every branch"),
    "plugins": ("plugins", "list the installed plugins, their hooks and the components they register"),
    "recipes": ("recipes", "list the shipped recipes, or copy one (haste recipes cp NAME)"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every flag's help, and descriptions printed as written."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``haste --help`` lists the verbs (each verb parses its own arguments)."""
    parser = argparse.ArgumentParser(
        prog="haste",
        description="haste: train diffusion transformers faster by aligning them with a frozen vision teacher, "
        "then letting go. `haste VERB --help` shows a verb's flags and their defaults.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"haste {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for verb, (_, summary) in VERBS.items():
        verbs.add_parser(verb, help=summary, add_help=False)
    return parser


def verb_parser(verb: str) -> argparse.ArgumentParser:
    """The parser of one verb, with every flag and its default."""
    module, summary = VERBS[verb]
    parser = argparse.ArgumentParser(
        prog=f"haste {verb}", description=_module(module).__doc__ or summary, formatter_class=HelpFormatter
    )
    _module(module).add_arguments(parser, verb)
    return parser


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"haste_core.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    """The ``haste`` console script: ``haste VERB ...``; ``haste`` alone prints the verbs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VERBS:
        verb = argv[0]
        args = verb_parser(verb).parse_intermixed_args(argv[1:])
        args.verb = verb
        return _module(VERBS[verb][0]).run(args)
    parser = build_parser()
    parser.parse_args(argv)  # --help, --version, or an unknown verb (exit 2, naming the choices)
    parser.print_help()
    return 0
