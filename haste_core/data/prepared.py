"""The on-disk layout of a prepared data set (written by ``haste_core.data.prepare``, read by the data plugins).

A prepared folder holds shards of at most ``shard_size`` items, one ``.npy`` file per field and shard, and a
``manifest.json`` listing every shard with its item count and the SHA-256 of each file::

    DST/manifest.json
    DST/images/00000.npy         uint8  n×3×R×R   ADM centre crops
    DST/latents/00000.npy        float32 n×2C×h×w VAE posterior mean ‖ std (unscaled)
    DST/latents_flip/00000.npy   the same for the horizontally flipped crops (only with --flip)
    DST/labels/00000.npy         int64  n        class ids (imagenet)
    DST/text/00000.npy           float16 n×K×L×D caption token embeddings (coco), with text_mask/ and pooled/

Shards are written to a temporary name and renamed, so a shard file that exists is complete; the manifest is
rewritten after every shard, which makes preparation resumable. Fields are memory-mapped when read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from haste_core.errors import HasteError

MANIFEST = "manifest.json"
FORMAT = "haste-prepared/1"
CHECKSUM_CHUNK = 1 << 22  # bytes read at a time when hashing
REQUIRED_KEYS = ("kind", "resolution", "num_items", "num_classes", "latent_shape", "shards")


def shard_file(root: Path, field: str, shard: int) -> Path:
    return root / field / f"{shard:05d}.npy"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHECKSUM_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_array(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` atomically; return its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
    os.replace(temporary, path)
    return sha256(path)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    temporary = root / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(temporary, root / MANIFEST)


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a prepared folder; ``HasteError`` naming the file when it is missing or unreadable."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise HasteError(f"{path} does not exist: {root} is not a prepared data set")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HasteError(f"{path} is not a readable manifest ({exc}); prepare the folder again") from None
    if not isinstance(manifest, dict):
        raise HasteError(
            f"{path} holds a {type(manifest).__name__}, not a manifest (a JSON object); prepare the folder again"
        )
    if manifest.get("format") != FORMAT:
        raise HasteError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; prepare it again")
    if not manifest.get("complete"):
        done = sum(s["count"] for s in manifest.get("shards", []))
        raise HasteError(
            f"{root} is only partly prepared ({done} of {manifest.get('num_items')} items); run the same "
            "`haste prepare` command again to finish it (it resumes)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    bad_shards = not isinstance(manifest.get("shards"), list) or not all(
        isinstance(shard, dict) and "count" in shard and "files" in shard for shard in manifest["shards"]
    )
    if missing or bad_shards:
        what = f"lacks {', '.join(missing)}" if missing else "has shard entries without count and files"
        hint = f"run `{manifest['command']}` again" if "command" in manifest else "prepare the folder again"
        raise HasteError(f"{path} {what}; it was edited or written by something else: {hint}")
    return manifest


@dataclass
class ShardedField:
    """One field of a prepared folder as a single indexable array over all shards (memory-mapped, lazily)."""

    root: Path
    field: str
    counts: list[int]
    item_shape: tuple[int, ...] | None = None
    repair: str = ""  # the command that checks the folder and redoes bad shards (the manifest's "command")

    def __post_init__(self) -> None:
        self.starts = np.cumsum([0, *self.counts])
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def check(self) -> None:
        """Open every shard once: missing, truncated or mis-shaped files fail here, with their names."""
        for shard in range(len(self.counts)):
            self._open(shard)

    def _open(self, shard: int) -> np.ndarray:
        array = self._arrays.get(shard)
        if array is None:
            path = shard_file(self.root, self.field, shard)
            if not path.is_file():
                raise HasteError(f"{path} is missing; {self._repair_hint()}")
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
                raise HasteError(f"{path} is empty, truncated or corrupt ({exc}); {self._repair_hint()}") from None
            expected = self.counts[shard]
            if array.shape[0] != expected or (self.item_shape and tuple(array.shape[1:]) != self.item_shape):
                raise HasteError(
                    f"{path} holds an array of shape {list(array.shape)}, the manifest expects "
                    f"{[expected, *(self.item_shape or array.shape[1:])]}; {self._repair_hint()}"
                )
            self._arrays[shard] = array
        return array

    def _repair_hint(self) -> str:
        command = f"`{self.repair}`" if self.repair else "the `haste prepare` command that made this folder"
        return f"run {command} again: it checks every shard and redoes the damaged ones"

    def check_labels(self, num_classes: int) -> None:
        """Every label is a class of the manifest (0..num_classes-1): a label equal to ``num_classes`` would
        otherwise train silently as the null class of classifier-free guidance."""
        for shard in range(len(self.counts)):
            labels = np.asarray(self._open(shard))
            bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
            if bad.size:
                first = int(bad[0])
                raise HasteError(
                    f"{shard_file(self.root, self.field, shard)}: item {int(self.starts[shard]) + first} (row {first} "
                    f"of that file) has label {int(labels[first])}, and {bad.size} label(s) there are out of range; "
                    f"valid labels are 0..{num_classes - 1} ({self.root / MANIFEST} says num_classes "
                    f"{num_classes}). Fix that file, or prepare the folder again."
                )

    def __getitem__(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return np.asarray(self._open(shard)[index - self.starts[shard]])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}  # workers re-open their own memory maps


def write_example(
    root: Path,
    *,
    num_items: int = 8,
    resolution: int = 16,
    latent_channels: int = 4,
    downsample: int = 8,
    num_classes: int = 4,
    flip: bool = False,
    seed: int = 0,
) -> Path:
    """A tiny prepared class-conditional folder of random content (contract tests, docs); returns ``root``."""
    rng = np.random.default_rng(seed)
    side = resolution // downsample
    half = (num_items, latent_channels, side, side)
    fields = {
        "images": rng.integers(0, 256, (num_items, 3, resolution, resolution), dtype=np.uint8),
        "latents": np.concatenate(
            [rng.standard_normal(half), np.full(half, 0.1)],
            axis=1,
        ).astype(np.float32),
        "labels": (np.arange(num_items) % num_classes).astype(np.int64),
    }
    if flip:
        fields["latents_flip"] = fields["latents"][..., ::-1].copy()
    root.mkdir(parents=True, exist_ok=True)
    files = {field: save_array(shard_file(root, field, 0), array) for field, array in fields.items()}
    write_manifest(
        root,
        {
            "format": FORMAT,
            "kind": "imagenet",
            "resolution": resolution,
            "num_items": num_items,
            "num_classes": num_classes,
            "classes": [f"class_{i}" for i in range(num_classes)],
            "latent_shape": [latent_channels, side, side],
            "vae": "example (random latents)",
            "flip": flip,
            "shard_size": num_items,
            "shards": [{"count": num_items, "files": files}],
            "complete": True,
        },
    )
    return root
