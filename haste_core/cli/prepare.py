"""``haste prepare imagenet|coco SRC DST``: crop, encode with the SD-VAE (and embed captions), in resumable shards.

    torchrun --standalone --nproc_per_node=8 --no-python haste prepare imagenet /data/ILSVRC2012/train data/in256
    haste prepare coco /data/coco2014 data/coco256 --split train2014

Running the same command again resumes an interrupted preparation.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from haste_core.cli.common import report, setup_logging


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    from haste_core.data.prepare import PrepareSettings

    d = {field.name: field.default for field in dataclasses.fields(PrepareSettings)}
    parser.add_argument("kind", choices=["imagenet", "coco"], help="the source's layout")
    parser.add_argument("src", type=Path, help="ILSVRC2012 train/ (imagenet) or the COCO root (coco)")
    parser.add_argument("dst", type=Path, help="the prepared folder to write (resumable)")
    parser.add_argument("--resolution", type=int, default=d["resolution"], help="side of the centre crops, px")
    parser.add_argument("--vae", default=d["vae"], help="hub name or local folder of a diffusers AutoencoderKL")
    parser.add_argument("--flip", action="store_true", help="also store latents of the mirrored crops")
    parser.add_argument("--shard-size", type=int, default=d["shard_size"], help="items per shard")
    parser.add_argument("--batch", type=int, default=d["batch"], help="images per VAE/text-encoder call")
    parser.add_argument("--workers", type=int, default=d["workers"], help="image-decoding processes per rank")
    parser.add_argument("--limit", type=int, default=d["limit"], help="only the first N items (0: all)")
    parser.add_argument("--split", default=d["split"], help="coco: the image folder and caption file to use")
    parser.add_argument("--captions", type=int, default=d["captions"], help="coco: captions kept per image")
    parser.add_argument("--text-model", default=d["text_model"], help="coco: open_clip model name")
    parser.add_argument("--text-weights", default=d["text_weights"], help="coco: open_clip tag or weights file")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to encode")


def settings_from(args: argparse.Namespace):
    from haste_core.data.prepare import PrepareSettings

    fields = {f.name for f in dataclasses.fields(PrepareSettings)}
    return PrepareSettings(**{key: value for key, value in vars(args).items() if key in fields})


def run(args: argparse.Namespace) -> int:
    from haste_core import distributed
    from haste_core.data.prepare import prepare
    from haste_core.errors import HasteError

    setup_logging()
    try:
        settings = settings_from(args)
    except HasteError as exc:
        return report(exc)
    return distributed.run_command(args.device, lambda env: prepare(settings, env))
