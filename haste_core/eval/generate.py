"""Generate images from a checkpoint's EMA student: PNGs and the ADM-suite ``.npz``, on one or many processes
(``haste sample``).

The recipe stored in the checkpoint rebuilds the student, the objective and the data set (whose ``to_images``
decodes latents with the VAE, so a latents recipe needs its prepared folder's manifest and the VAE here). Image i
uses noise seeded by (seed, i) and label i mod C (``balanced``, the same count per class) or a seeded uniform draw
(``uniform``, as generate.py of REPA/HASTE does); which one is printed and stored. Rank r makes images r, r + W,
... as ``OUT/{i:06d}.png``; a restarted command skips images already written. Rank 0 then packs the first ``num``
images into ``OUT.npz`` (``arr_0``: uint8 N×H×W×3) and writes ``OUT/sampling.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from haste_core import distributed
from haste_core.config.coerce import to_plain
from haste_core.config.sections import SamplingConfig
from haste_core.distributed import to_device
from haste_core.errors import HasteError
from haste_core.eval.samplers import PATH_SEED_OFFSET, sample
from haste_core.eval.scores import write_npz
from haste_core.weights import checkpoint
from haste_core.weights.checkpoint_recipe import checkpoint_recipe

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


def load_student(
    path: Path, device: torch.device, use_ema: bool = True, local_plugins: Sequence[str] = ()
) -> tuple[Any, Any, Any, Any]:
    """(recipe, student in eval mode, objective, data set) from a checkpoint; only installed plugins and the
    ``local_plugins`` the user named are loaded, never the ones the checkpoint's recipe lists."""
    state = checkpoint.load(path)
    recipe, _ = checkpoint_recipe(state, path, local_plugins)
    if recipe.data_spec.unavailable:
        raise HasteError(f"data: {recipe.data_spec.unavailable}")
    student = recipe.student.build(data=recipe.data_spec, spec=recipe.student_spec)
    student.load_state_dict(state["ema" if use_ema else "student"])
    data = recipe.data
    scoring = data.entry.cls.scoring_config(data.config)  # e.g. latents decoded by the VAE, not channel previews
    if scoring != data.config:
        log.info(f"data {data.name}: building it for scoring ({to_plain(scoring)})")
    return recipe, student.to(device).eval(), recipe.objective.build(), data.entry.build(scoring, split="train")


def generate_folder(
    checkpoint_path: Path,
    out: Path,
    config: SamplingConfig,
    env: distributed.DistEnv,
    *,
    num: int,
    label_mode: str = "balanced",
    batch: int = 64,
    use_ema: bool = True,
    preset: str | None = None,
    local_plugins: Sequence[str] = (),
) -> Path | None:
    """Write images 0..num-1 of ``checkpoint_path``'s student to ``out`` (this rank's share; images already there are
    kept), then on rank 0 the ``.npz`` next to ``out`` and ``out/sampling.json``; returns the ``.npz`` path on rank 0
    (None on the others). ``preset``: the evaluation preset the settings come from, recorded in ``sampling.json``;
    ``local_plugins``: plugin modules the user named (a checkpoint's own list is never imported)."""
    _, student, objective, dataset = load_student(checkpoint_path, env.device, use_ema, local_plugins)
    classes = dataset.spec.num_classes
    labels = image_labels(num, classes, label_mode, config.seed) if classes else None
    out.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(env.rank, num, env.world_size) if not (out / f"{i:06d}.png").is_file()]
    if env.is_main:
        what = f"{label_mode} labels over {classes} classes" if classes else "the data set's sample conditions"
        log.info(f"{num} images from {checkpoint_path} ({'EMA' if use_ema else 'live'} weights), "
                 f"{config.sampler} {config.steps} steps, cfg {config.cfg_scale} on {list(config.guidance_interval)}, "
                 f"{what}; {env.world_size} process(es)")  # fmt: skip
    from tqdm import tqdm

    progress = tqdm(total=len(mine), unit="img", desc=f"sample (rank 0 of {env.world_size})", disable=not env.is_main)
    for start in range(0, len(mine), batch):
        indices = mine[start : start + batch]
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
    stack = np.stack([np.asarray(Image.open(out / f"{i:06d}.png").convert("RGB")) for i in range(num)])
    npz = write_npz(out.with_suffix(".npz") if out.suffix != ".npz" else out, stack)
    record = {"checkpoint": str(checkpoint_path), "step": int(checkpoint.load_meta(checkpoint_path)["step"]),
              "num": num, "labels": label_mode if classes else "data set sample conditions",
              "weights": "ema" if use_ema else "live", "sampler": config.sampler, "steps": config.steps,
              "cfg_scale": config.cfg_scale, "guidance_interval": list(config.guidance_interval), "seed": config.seed,
              "preset": preset, "npz": str(npz)}  # fmt: skip
    (out / "sampling.json").write_text(json.dumps(record, indent=1))
    log.info(f"wrote {num} PNGs to {out} and {npz} ({record['labels']} labels)")
    return npz
