"""``coco``: text-conditioned images + latents + caption embeddings (``haste prepare coco``).

Each image has K captions (5 by default); item i is image i mod N with caption (i div N) mod K, so an epoch
sees every caption once (with ``flip: true``, a second pass with mirrored images and their own latents).
``cond`` is ``{"text": float L×D, "text_mask": bool L, "pooled": float P}`` (the layout under
``haste_core.interfaces.Dataset``); ``x``/``x_std``/``image`` are as in ``latents``. The empty caption's
embedding that preparation computed is ``null_caption()`` (the student learns its own null caption for
guidance; this one is kept for students that want the reference behaviour of REPA/HASTE).
Sample grids show the first n images' first captions (``sample_conds``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from haste_core import DataSpec, Registry, hookimpl
from haste_core.data.prepared import MANIFEST, ShardedField, save_array, write_example, write_manifest
from haste_core.weights.cache import cache_dir
from haste_data.latents import EXAMPLE_RESOLUTION, Latents, read_checked_manifest

CLIP_L_TEXT = (77, 768, 768)  # CLIP ViT-L/14 text tower: tokens, width, projected pooled width


class Coco(Latents):
    """Caption-conditioned latents from a prepared MS-COCO folder."""

    @dataclass(kw_only=True, frozen=True)
    class Config(Latents.Config):
        num_classes: int = 0
        text_len: int = CLIP_L_TEXT[0]  # used while the folder does not exist yet
        text_dim: int = CLIP_L_TEXT[1]
        pooled_dim: int = CLIP_L_TEXT[2]

    kind = "coco"

    @classmethod
    def example_config(cls, **specs: Any) -> Config:
        root = cache_dir() / "examples" / f"coco_{EXAMPLE_RESOLUTION}"
        if not (root / MANIFEST).is_file():
            write_example_coco(root)
        return cls.Config(path=str(root), resolution=EXAMPLE_RESOLUTION, preview="channels")

    @classmethod
    def describe(cls, config: Config) -> DataSpec:
        manifest = read_checked_manifest(config, cls.kind)
        spec = super().describe(config)
        if manifest is None:
            text = (config.text_len, config.text_dim, config.pooled_dim)
            return DataSpec(spec.x_shape, spec.image_shape, 0, 0, *text, unavailable=spec.unavailable)
        text = (manifest["text_len"], manifest["text_dim"], manifest["pooled_dim"])
        return DataSpec(spec.x_shape, spec.image_shape, 0, spec.num_items * manifest["captions_per_image"], *text)

    def __init__(self, config: Config, *, split: str = "train") -> None:
        super().__init__(config, split=split)
        counts = [shard["count"] for shard in self.manifest["shards"]]
        root, spec = Path(config.path), self._spec
        self.captions = self.manifest["captions_per_image"]
        self.text = ShardedField(root, "text", counts, (self.captions, spec.text_len, spec.text_dim))
        self.text_mask = ShardedField(root, "text_mask", counts, (self.captions, spec.text_len))
        self.pooled = ShardedField(root, "pooled", counts, (self.captions, spec.pooled_dim))
        for field in (self.text, self.text_mask, self.pooled):
            field.check()

    def _cond(self, base: int, caption: int) -> dict[str, Tensor]:
        return {
            "text": torch.from_numpy(self.text[base][caption].astype(np.float32)),
            "text_mask": torch.from_numpy(self.text_mask[base][caption].copy()),
            "pooled": torch.from_numpy(self.pooled[base][caption].astype(np.float32)),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.check_index(index)
        n = self.base_items
        caption, flipped = (index // n) % self.captions, index >= n * self.captions
        item = super().__getitem__(index % n + (n if flipped else 0))
        item["cond"] = self._cond(index % n, caption)
        return item

    def sample_conds(self, n: int) -> dict[str, Tensor]:
        """The first caption of images 0, 1, ... (repeating when n exceeds the set)."""
        return self.sample_conds_at(list(range(n)))

    def sample_conds_at(self, indices: list[int]) -> dict[str, Tensor]:
        """The first caption of images ``indices`` (modulo the set's size); reads only those."""
        conds = [self._cond(i % self.base_items, 0) for i in indices]
        return {key: torch.stack([c[key] for c in conds]) for key in conds[0]}

    def null_caption(self) -> dict[str, Tensor]:
        """The empty caption's embedding as preparation computed it (unbatched)."""
        root = Path(self.config.path) / "null_caption"
        load = lambda name: torch.from_numpy(np.load(root / f"{name}.npy"))  # noqa: E731
        return {"text": load("text").float(), "text_mask": load("text_mask"), "pooled": load("pooled").float()}


def write_example_coco(root: Path, captions: int = 2, text: tuple[int, int, int] = (6, 8, 4)) -> Path:
    """A tiny prepared COCO-style folder of random content (contract tests, docs)."""
    write_example(root, resolution=EXAMPLE_RESOLUTION)
    rng = np.random.default_rng(1)
    manifest = json.loads((root / MANIFEST).read_text())
    count = manifest["num_items"]
    length, width, pooled = text
    mask = np.arange(length)[None, None, :] < rng.integers(1, length + 1, (count, captions, 1))
    fields = {
        "text": rng.standard_normal((count, captions, length, width)).astype(np.float16),
        "text_mask": mask,
        "pooled": rng.standard_normal((count, captions, pooled)).astype(np.float16),
    }
    for name, array in fields.items():
        manifest["shards"][0]["files"][name] = save_array(root / name / "00000.npy", array)
    manifest["null_caption"] = {
        "text": save_array(root / "null_caption" / "text.npy", np.zeros((length, width), np.float16)),
        "text_mask": save_array(root / "null_caption" / "text_mask.npy", np.arange(length) < 2),
        "pooled": save_array(root / "null_caption" / "pooled.npy", np.zeros(pooled, np.float16)),
    }
    manifest.update(kind="coco", num_classes=0, classes=[], captions_per_image=captions,
                    text_len=length, text_dim=width, pooled_dim=pooled)  # fmt: skip
    manifest["shards"][0]["files"].pop("labels")
    write_manifest(root, manifest)
    return root


@hookimpl
def haste_register_datasets(registry: Registry) -> None:
    registry.add("coco", Coco)
