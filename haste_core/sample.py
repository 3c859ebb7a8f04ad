"""Generate images from a checkpoint's EMA student: PNGs and the ADM-suite ``.npz``, on one or many processes.

    torchrun --standalone --nproc_per_node=8 -m haste_core.sample CHECKPOINT --num-images 50000 --out samples/run
        [--sampler sde] [--steps 250] [--cfg 1.0] [--guidance-low 0] [--guidance-high 1]
        [--labels balanced|uniform] [--batch 64] [--seed 0] [--no-ema]

The recipe stored in the checkpoint rebuilds the student, the objective and the data set (whose ``to_images``
decodes latents with the VAE, so a latents recipe needs its prepared folder's manifest and the VAE here). Image i
uses noise seeded by (seed, i) and label i mod C (``balanced``, the same count per class) or a seeded uniform draw
(``uniform``, as generate.py of REPA/HASTE does; haste_spec.md §5.4); which one is printed and stored. Rank r makes
images r, r + W, ... as ``OUT/{i:06d}.png``; a restarted command skips images already written. Rank 0 then packs
the first ``--num-images`` into ``OUT.npz`` (``arr_0``: uint8 N×H×W×3) and writes ``OUT/sampling.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from haste_core import checkpoint, distributed
from haste_core.data import to_device
from haste_core.errors import HasteError
from haste_core.evaluate import write_npz
from haste_core.sampling import PATH_SEED_OFFSET, sample
from haste_core.sections import SamplingConfig

log = logging.getLogger("haste")

_NOISE_SEED_STRIDE = 1_000_003  # per-image noise seed = seed · stride + index


def image_labels(count: int, num_classes: int, mode: str, seed: int) -> torch.Tensor:
    """Labels of images 0..count-1: ``balanced`` (i mod C) or ``uniform`` (seeded uniform draws)."""
    if mode == "balanced":
        return torch.arange(count) % num_classes
    if mode == "uniform":
        return torch.randint(num_classes, (count,), generator=torch.Generator().manual_seed(seed))
    raise HasteError(f"unknown label mode {mode!r}; choose balanced or uniform")


def image_noise(indices: list[int], shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise of the given images; image i's noise depends only on (seed, i)."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(seed * _NOISE_SEED_STRIDE + i)) for i in indices]
    )


@torch.no_grad()
def generate(
    student: Any,
    objective: Any,
    dataset: Any,
    indices: list[int],
    labels: torch.Tensor | None,
    config: SamplingConfig,
    device: torch.device,
) -> torch.Tensor:
    """uint8 images (B×C×H×W, on the CPU) of the given image indices."""
    spec = dataset.spec
    noise = image_noise(indices, spec.x_shape, config.seed).to(device)
    # class data: the given labels; text or unconditional data: the data set's own sample conditions
    cond = labels[indices].to(device) if spec.num_classes else to_device(dataset.sample_conds_at(indices), device)
    # the stochastic samplers' noise, per image too: image i is the same whatever batch or process draws it
    seeds = [config.seed * _NOISE_SEED_STRIDE + i + PATH_SEED_OFFSET for i in indices]
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    x = sample(student, objective, noise, cond, config, generator=generators)
    return dataset.to_images(x.float()).cpu()


def load_student(path: Path, device: torch.device, use_ema: bool = True) -> tuple[Any, Any, Any, Any]:
    """(recipe, student in eval mode, objective, data set) from a checkpoint."""
    from haste_core.plugins import load_plugins
    from haste_core.recipe import validate

    state = checkpoint.load(path)
    raw = state["recipe"]
    data = raw.get("data") or {}
    if data.get("preview") == "channels":  # latents/coco: channel previews are no images to score; decode them
        log.info("the checkpoint's recipe previews latents as channels (data.preview=channels); decoding with the VAE")
        raw = {**raw, "data": {**data, "preview": "vae"}}
    plugins = load_plugins(raw.get("plugins") or [])
    recipe = validate(raw, plugins, source=str(path))
    if recipe.data_spec.unavailable:
        raise HasteError(f"data: {recipe.data_spec.unavailable}")
    student = recipe.student.build(data=recipe.data_spec)
    student.load_state_dict(state["ema" if use_ema else "student"])
    return recipe, student.to(device).eval(), recipe.objective.build(), recipe.data.build(split="train")


def run(args: argparse.Namespace, env: distributed.DistEnv) -> Path | None:
    _, student, objective, dataset = load_student(args.checkpoint, env.device, use_ema=not args.no_ema)
    config = SamplingConfig(
        sampler=args.sampler,
        steps=args.steps,
        cfg_scale=args.cfg,
        guidance_low=args.guidance_low,
        guidance_high=args.guidance_high,
        seed=args.seed,
    )
    classes = dataset.spec.num_classes
    labels = image_labels(args.num, classes, args.labels, args.seed) if classes else None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(env.rank, args.num, env.world_size) if not (out / f"{i:06d}.png").is_file()]
    if env.is_main:
        what = f"{args.labels} labels over {classes} classes" if classes else "the data set's sample conditions"
        log.info(f"{args.num} images from {args.checkpoint} ({'EMA' if not args.no_ema else 'live'} weights), "
                 f"{config.sampler} {config.steps} steps, cfg {config.cfg_scale} on {list(config.guidance_interval)}, "
                 f"{what}; {env.world_size} process(es)")  # fmt: skip
    from tqdm import tqdm

    progress = tqdm(total=len(mine), unit="img", desc=f"sample (rank 0 of {env.world_size})", disable=not env.is_main)
    for start in range(0, len(mine), args.batch):
        indices = mine[start : start + args.batch]
        images = generate(student, objective, dataset, indices, labels, config, env.device)
        for index, image in zip(indices, images, strict=True):
            array = image.permute(1, 2, 0).numpy()
            picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).convert("RGB")
            temporary = out / f".{index:06d}.png.tmp"  # a PNG that exists is complete: resuming trusts it
            picture.save(temporary, format="PNG")
            temporary.replace(out / f"{index:06d}.png")
        progress.update(len(indices))
    progress.close()
    distributed.barrier()
    if not env.is_main:
        return None
    stack = np.stack([np.asarray(Image.open(out / f"{i:06d}.png").convert("RGB")) for i in range(args.num)])
    npz = write_npz(out.with_suffix(".npz") if out.suffix != ".npz" else out, stack)
    record = {"checkpoint": str(args.checkpoint), "step": int(checkpoint.load(args.checkpoint)["step"]),
              "num": args.num, "labels": args.labels if classes else "data set sample conditions",
              "weights": "live" if args.no_ema else "ema", "sampler": config.sampler, "steps": config.steps,
              "cfg_scale": config.cfg_scale, "guidance_interval": list(config.guidance_interval), "seed": args.seed,
              "npz": str(npz)}  # fmt: skip
    (out / "sampling.json").write_text(json.dumps(record, indent=1))
    log.info(f"wrote {args.num} PNGs to {out} and {npz} ({record['labels']} labels)")
    return npz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m haste_core.sample", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    # not "--num": torchrun would take it for an abbreviation of its own --numa-binding
    parser.add_argument("--num-images", dest="num", type=int, default=50_000)
    parser.add_argument("--out", type=Path, required=True, help="folder of PNGs; the .npz goes next to it")
    parser.add_argument("--sampler", default="sde", choices=["euler", "heun", "sde", "ddpm"])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--guidance-low", type=float, default=0.0)
    parser.add_argument("--guidance-high", type=float, default=1.0)
    parser.add_argument("--labels", default="balanced", choices=["balanced", "uniform"])
    parser.add_argument("--batch", type=int, default=64, help="images per process per sampler call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="sample from the live weights instead of the EMA")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    if args.num < 1 or args.batch < 1:
        parser.error("--num-images and --batch must be at least 1")
    logging.basicConfig(level=logging.INFO if distributed.env_rank() == 0 else logging.WARNING,
                        format="[haste] %(message)s")  # fmt: skip
    return distributed.run_command(args.device, lambda env: run(args, env))


if __name__ == "__main__":
    sys.exit(main())
