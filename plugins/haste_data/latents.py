"""``latents``: an ImageNet-style prepared folder (``haste prepare imagenet``).

Items: ``image`` uint8 3×R×R (for teachers; left out in Phase II), ``x`` the scaled posterior mean
``scale·mean + shift`` (C×h×w), ``x_std`` its scaled standard deviation and ``cond`` the class id. The posterior
is sampled on the training device each step (``finish_batch``: x + x_std·ε, the global RNG that checkpoints
restore), as REPA/HASTE do. With ``flip: true`` the set has twice the items: index
i + N is item i flipped left-right with its own latents (a flipped latent is not the latent of a flipped image).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from haste_core import DataSpec, HasteError, RecipeError, Registry, hookimpl
from haste_core.data.prepared import MANIFEST, ShardedField, read_manifest, write_example
from haste_core.data.vae import DEFAULT_VAE, SD_VAE_SCALE
from haste_core.weights.cache import cache_dir
from haste_core.weights.hub import HubFile, diffusers_hub_files
from haste_data.base import OpenedDataset

SD_VAE_DOWNSAMPLE = 8  # SD-VAE: 256 px -> 32×32 latents
SD_VAE_CHANNELS = 4
IMAGENET_CLASSES = 1000
EXAMPLE_RESOLUTION = 16  # contract tests: a tiny random folder in the haste cache


def prepare_command(kind: str, path: str, resolution: int, flip: bool) -> str:
    """The command that makes a missing prepared folder."""
    source = "/path/to/ILSVRC2012/train" if kind == "imagenet" else "/path/to/coco2014"
    extra = " --flip" if flip else ""
    return (
        f"torchrun --standalone --nproc_per_node=8 --no-python haste prepare {kind} {source} {path} "
        f"--resolution {resolution}{extra}"
    )


def read_checked_manifest(config: Any, kind: str) -> dict[str, Any] | None:
    """The folder's manifest checked against the recipe, or None when the folder does not exist yet."""
    root = Path(config.path)
    if not (root / MANIFEST).is_file() and not root.exists():
        return None
    try:
        manifest = read_manifest(root)
    except HasteError as exc:
        raise RecipeError(str(exc), "path") from None
    if manifest.get("kind") != kind:
        raise RecipeError(f"{root} was prepared as {manifest.get('kind')!r} data; this data set reads {kind!r}", "path")
    if manifest["resolution"] != config.resolution:
        raise RecipeError(
            f"{root} holds {manifest['resolution']} px images; set data.resolution={manifest['resolution']} "
            "or prepare the folder at this resolution",
            "resolution",
        )
    if config.flip and not manifest.get("flip"):
        raise RecipeError(
            f"{root} has no latents of flipped images; prepare it again with --flip "
            f"({prepare_command(kind, config.path, config.resolution, True)}) or set data.flip=false",
            "flip",
        )
    return manifest


class Latents(OpenedDataset):
    """Class-conditional images + VAE posterior moments from a prepared folder."""

    @dataclass(kw_only=True, frozen=True)
    class Config:
        path: str  # the prepared folder (haste_core.data.prepare imagenet SRC DST)
        resolution: int = 256  # 256 or 512 in the papers
        num_classes: int = IMAGENET_CLASSES  # used while the folder does not exist yet
        latent_channels: int = SD_VAE_CHANNELS
        vae_downsample: int = SD_VAE_DOWNSAMPLE
        scale: float = SD_VAE_SCALE  # x = scale·z + shift (SD-VAE: 0.18215, 0)
        shift: float = 0.0
        sample_posterior: bool = True  # a fresh posterior sample per step (REPA); false: the mean
        flip: bool = False  # double the set with flipped images and their own latents
        preview: Literal["vae", "channels"] = "vae"  # to_images: VAE decode, or latent channels 0-2 as RGB
        vae: str = ""  # VAE for previews; empty: the one recorded in the manifest

        def __post_init__(self) -> None:
            if not self.path:
                raise RecipeError("give the prepared folder (haste prepare imagenet SRC DST)", "path")
            if self.resolution % self.vae_downsample or self.resolution <= 0:
                raise RecipeError(f"must be a positive multiple of {self.vae_downsample}", "resolution")
            if self.scale <= 0:
                raise RecipeError(f"must be positive, got {self.scale}", "scale")

    kind = "imagenet"

    @classmethod
    def example_config(cls, **specs: Any) -> Config:
        root = cache_dir() / "examples" / f"{cls.kind}_{EXAMPLE_RESOLUTION}"
        if not (root / MANIFEST).is_file():
            write_example(root, resolution=EXAMPLE_RESOLUTION)
        return cls.Config(path=str(root), resolution=EXAMPLE_RESOLUTION, preview="channels")

    @classmethod
    def scoring_config(cls, config: Config) -> Config:
        """Channel previews are no images to score: generation decodes the latents with the VAE."""
        return dataclasses.replace(config, preview="vae")

    @classmethod
    def hub_files(cls, config: Config) -> list[HubFile]:
        """The preview VAE's hub files, for ``haste prefetch`` (the folder's VAE, or the default
        SD-VAE while the folder is not prepared; none for a local VAE folder or ``preview: channels``)."""
        if config.preview != "vae":
            return []
        manifest = read_checked_manifest(config, cls.kind)
        return diffusers_hub_files(config.vae or (manifest["vae"] if manifest else DEFAULT_VAE))

    @classmethod
    def describe(cls, config: Config) -> DataSpec:
        manifest = read_checked_manifest(config, cls.kind)
        side = config.resolution // config.vae_downsample
        image_shape = (3, config.resolution, config.resolution)
        if manifest is None:
            return DataSpec(
                x_shape=(config.latent_channels, side, side),
                image_shape=image_shape,
                num_classes=config.num_classes,
                num_items=0,
                unavailable=(
                    f"the prepared folder {config.path} does not exist yet; make it with:\n  "
                    + prepare_command(cls.kind, config.path, config.resolution, config.flip)
                ),
            )
        return DataSpec(
            x_shape=tuple(manifest["latent_shape"]),
            image_shape=image_shape,
            num_classes=manifest["num_classes"],
            num_items=manifest["num_items"] * (2 if config.flip else 1),
        )

    def __init__(self, config: Config, *, split: str = "train") -> None:
        if split != "train":
            raise HasteError(f"the {self.kind} folder {config.path} has only a training split, not {split!r}")
        self.config = config
        self._spec = self.describe(config)
        if self._spec.unavailable:
            raise HasteError(self._spec.unavailable)
        manifest = read_manifest(Path(config.path))
        self.manifest = manifest
        counts = [shard["count"] for shard in manifest["shards"]]
        root = Path(config.path)
        channels, side = manifest["latent_shape"][0], manifest["latent_shape"][1]
        res = manifest["resolution"]
        repair = manifest.get("command", "")
        self.images = ShardedField(root, "images", counts, (3, res, res), repair)
        self.latents = ShardedField(root, "latents", counts, (2 * channels, side, side), repair)
        self.latents_flip = (
            ShardedField(root, "latents_flip", counts, (2 * channels, side, side), repair) if config.flip else None
        )
        self.labels = ShardedField(root, "labels", counts, (), repair) if self.kind == "imagenet" else None
        for field in (self.images, self.latents, self.latents_flip, self.labels):
            if field is not None:
                field.check()
        if self.labels is not None:
            self.labels.check_labels(manifest["num_classes"])
        self.base_items = manifest["num_items"]
        self._vae: Any = None
        if config.preview == "vae":
            from haste_core.data.vae import check_vae_reachable

            check_vae_reachable(config.vae or manifest["vae"])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        self.check_index(index)
        flipped = index >= self.base_items
        base = index - self.base_items if flipped else index
        source = self.latents_flip if flipped else self.latents
        moments = torch.from_numpy(source[base].astype("float32", copy=True))
        mean, std = moments.chunk(2, dim=0)
        item = {"x": mean * self.config.scale + self.config.shift}
        if self.labels is not None:
            item["cond"] = torch.tensor(int(self.labels[base]))
        if self.config.sample_posterior:
            item["x_std"] = std * self.config.scale
        if self.images_needed:
            image = torch.from_numpy(self.images[base].copy())
            item["image"] = image.flip(-1) if flipped else image
        return item

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Draw the per-step posterior sample x = mean + std·ε on the training device."""
        std = batch.pop("x_std", None)
        if std is not None:
            batch["x"] = batch["x"] + std * torch.randn_like(std)
        return batch

    def to_images(self, x: Tensor) -> Tensor:
        if self.config.preview == "channels":
            z = (x[:, :3] - self.config.shift) / self.config.scale
            low, high = z.amin(dim=(1, 2, 3), keepdim=True), z.amax(dim=(1, 2, 3), keepdim=True)
            return ((z - low) / (high - low).clamp_min(1e-6) * 255).round().to(torch.uint8)
        from haste_core.data.vae import decode_latents, load_vae

        if self._vae is None:
            self._vae = load_vae(self.config.vae or self.manifest["vae"], x.device)
        return decode_latents(self._vae, x, scale=self.config.scale, shift=self.config.shift).to(x.device)


@hookimpl
def haste_register_datasets(registry: Registry) -> None:
    registry.add("latents", Latents)
