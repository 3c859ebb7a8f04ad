"""``haste sample CHECKPOINT --out FOLDER``: generate images from a checkpoint's EMA student (PNGs and the ADM .npz).

Under torchrun every process draws its share; a restarted command skips images already written. Image i's noise
depends only on (seed, i), so the set does not depend on the number of processes::

    torchrun --standalone --nproc_per_node=8 --no-python haste sample CHECKPOINT --num-images 50000 --out samples/run

``--preset NAME`` runs a published protocol (``haste_core.eval.presets``, e.g. ``haste_sit_xl2_in256``: SDE 250
steps, CFG 1.65 on [0, 0.72], uniform labels, 50,000 images) and records its name in ``sampling.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from haste_core.cli.common import report, setup_logging

BUILT_IN_SAMPLERS = ("euler", "heun", "sde")
# flags a --preset pins (flag -> preset field); --num-images only takes the preset's count as its default
PINNED = {"sampler": "sampler", "steps": "steps", "cfg": "cfg_scale", "guidance_low": "guidance_low",
          "guidance_high": "guidance_high", "labels": "labels", "seed": "seed"}  # fmt: skip


class _Given(argparse.Action):
    """Stores the value and notes that the flag was given (so that a --preset can refuse or yield to it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", set()), self.dest}


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    from haste_core.eval.presets import PRESETS

    parser.add_argument(
        "checkpoint", type=Path, help="a haste checkpoint (.pt, or .dcp: sharded), e.g. RUN/checkpoints/latest.pt"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of PNGs; the .npz goes next to it")
    # not "--num": torchrun would take it for an abbreviation of its own --numa-binding
    parser.add_argument(
        "--preset", default=None, choices=sorted(PRESETS),
        help="a published protocol: pins sampler, steps, cfg, guidance interval, labels, seed (docs/data_and_eval.md)",
    )  # fmt: skip
    given = {"action": _Given}
    parser.add_argument("--num-images", dest="num", type=int, default=50_000, help="images to generate (a --preset: "
                        "the protocol's count)", **given)  # fmt: skip
    parser.add_argument(
        "--sampler", default="sde", help=f"{', '.join(BUILT_IN_SAMPLERS)}, or one the checkpoint's objective adds",
        **given,
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=250, help="sampler steps", **given)
    parser.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1: none)", **given)
    start = "guide the steps that start at t"
    parser.add_argument("--guidance-low", type=float, default=0.0, help=f"{start} >= this", **given)
    parser.add_argument("--guidance-high", type=float, default=1.0, help=f"{start} <= this", **given)
    parser.add_argument("--labels", default="balanced", choices=["balanced", "uniform"], help="class labels", **given)
    parser.add_argument("--batch", type=int, default=64, help="images per process per sampler call")
    parser.add_argument("--seed", type=int, default=0, help="image i uses noise seeded by (seed, i)", **given)
    parser.add_argument("--no-ema", action="store_true", help="sample from the live weights instead of the EMA")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to sample")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="load this local plugin module or .py file (repeatable); the plugins a checkpoint's recipe lists are "
        "never imported from it",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from haste_core import distributed
    from haste_core.config.sections import SamplingConfig
    from haste_core.errors import HasteError, RecipeError
    from haste_core.eval.generate import generate_folder

    setup_logging()
    given = getattr(args, "given", set())
    if args.preset:
        from haste_core.eval.presets import get_preset

        preset = get_preset(args.preset)
        clashing = sorted(f"--{flag.replace('_', '-')}" for flag in given & PINNED.keys())
        if clashing:
            return report(HasteError(f"--preset {args.preset} pins {', '.join(clashing)}; leave them out, or drop "
                                     "--preset to choose every setting yourself"))  # fmt: skip
        for flag, field in PINNED.items():
            setattr(args, flag, getattr(preset, field))
        if "num" not in given:
            args.num = preset.num_images
    if args.num < 1 or args.batch < 1:
        return report(HasteError(f"--num-images and --batch must be at least 1, got {args.num} and {args.batch}"))
    try:
        config = SamplingConfig(
            sampler=args.sampler,
            steps=args.steps,
            cfg_scale=args.cfg,
            guidance_low=args.guidance_low,
            guidance_high=args.guidance_high,
            seed=args.seed,
        )
    except RecipeError as exc:
        return report(exc)

    def work(env: distributed.DistEnv) -> None:
        generate_folder(
            args.checkpoint, args.out, config, env, num=args.num, label_mode=args.labels, batch=args.batch,
            use_ema=not args.no_ema, preset=args.preset, local_plugins=args.plugin,
        )  # fmt: skip

    return distributed.run_command(args.device, work)
