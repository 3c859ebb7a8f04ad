"""``haste evaluate SAMPLES REFERENCE``: FID, sFID, Inception Score, precision and recall of generated images.

SAMPLES and REFERENCE are ADM-suite ``.npz`` files (``arr_0``: uint8 N×H×W×3) or folders of PNGs. Prints one line
per metric and, with ``--out`` (e.g. ``metrics.json``), writes them as JSON, with ``reference_statistics`` saying
whether FID and sFID used the statistics stored in the reference file (``stored``, as the ADM suite) or its images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from haste_core.cli.common import report

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("samples", help="generated images: ADM .npz (arr_0) or a folder of PNGs")
    parser.add_argument("reference", help="reference images: ADM .npz (e.g. VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument(
        "--inception", default=None, help=f"path of {INCEPTION_FILE}; none: the haste or torch.hub cache"
    )
    parser.add_argument("--batch", type=int, default=200, help="images per Inception call")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run Inception")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the metrics as JSON here (e.g. metrics.json)"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from haste_core.errors import HasteError
    from haste_core.eval.scores import evaluate_files

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    try:
        metrics = evaluate_files(
            args.samples, args.reference, inception=args.inception, batch=args.batch, device=device
        )
    except HasteError as exc:
        return report(exc)
    print(f"{metrics['num_samples']} samples vs {metrics['num_reference']} reference images "
          f"({args.samples} vs {args.reference}):")  # fmt: skip
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"  {key:<16} {value:.4f}")
    sources = ", ".join(f"{metric} against the {source}" for metric, source in metrics["reference_statistics"].items())
    print(f"  reference statistics: {sources or 'none'} (stored: the mu/sigma in the reference file)")
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=1))
    return 0
