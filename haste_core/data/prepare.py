"""Turn ImageNet or MS-COCO into a prepared folder (layout: ``haste_core.data.prepared``), on one or many processes
(``haste prepare``).

imagenet: the source holds one folder per class (ILSVRC2012 ``train/``); class ids follow the sorted folder names.
coco: the source holds ``<split>/*.jpg`` and ``annotations/captions_<split>.json``; the first ``captions`` captions
of each image (sorted by annotation id) are embedded with open_clip's CLIP text tower, and so is the empty caption.

Every image gets the ADM centre crop (halve with a box filter while the short side is at least twice the
resolution, bicubic resize of the short side, centre crop) and the VAE posterior moments of the crop (and of its
mirror image with ``flip``). Items are cut into shards; shard s is made by rank s mod world size, written
atomically with a small record of its checksums, so an interrupted run is resumed by running the same command
again. Rank 0 shows a progress bar and writes the manifest when every shard is done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from haste_core import distributed
from haste_core.data.prepared import FORMAT, MANIFEST, save_array, shard_file, write_manifest
from haste_core.data.text_encoder import DEFAULT_TEXT_MODEL, DEFAULT_TEXT_WEIGHTS
from haste_core.data.vae import DEFAULT_VAE
from haste_core.errors import HasteError

log = logging.getLogger("haste")

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
DEFAULT_SHARD_SIZE = 1000
DEFAULT_CAPTIONS = 5  # every MS-COCO 2014 image has at least 5 captions
RECORDS = "shards"  # DST/shards/00000.json: count and checksums of a finished shard


def adm_center_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """ADM's centre crop as uint8 H×W×3 (guided-diffusion ``center_crop_arr``)."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - resolution) // 2, (array.shape[1] - resolution) // 2
    return array[top : top + resolution, left : left + resolution]


@dataclass(frozen=True)
class PrepareSettings:
    """What ``prepare`` makes and how (the flags of ``haste prepare``)."""

    kind: Literal["imagenet", "coco"]
    src: Path  # ILSVRC2012 train/ (imagenet) or the COCO root (coco)
    dst: Path  # the prepared folder to write (resumable)
    resolution: int = 256
    vae: str = DEFAULT_VAE  # hub name or local folder of a diffusers AutoencoderKL
    flip: bool = False  # also store latents of the mirrored crops
    shard_size: int = DEFAULT_SHARD_SIZE
    batch: int = 64  # images per VAE/text-encoder call
    workers: int = 4  # image-decoding processes per rank
    limit: int = 0  # only the first N items (a quick try); 0: all
    split: str = "train2014"  # coco: the image folder and caption file to use
    captions: int = DEFAULT_CAPTIONS  # coco: captions kept per image
    text_model: str = DEFAULT_TEXT_MODEL  # coco: open_clip model name
    text_weights: str = DEFAULT_TEXT_WEIGHTS  # coco: open_clip tag or weights file

    def __post_init__(self) -> None:
        if self.resolution % 8 or self.resolution < 8:
            raise HasteError(f"the resolution must be a positive multiple of 8 (the VAE's downsampling), got "
                             f"{self.resolution}")  # fmt: skip
        if self.shard_size < 1 or self.batch < 1:
            raise HasteError("the shard size and the batch must be at least 1")


@dataclass
class Source:
    """The items to prepare, in their final order."""

    paths: list[Path]
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)


def list_imagenet(src: Path) -> Source:
    folders = sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    if not folders:
        raise HasteError(f"{src} holds no class folders; expected ILSVRC2012 train/ (one folder of images per class)")
    source = Source(paths=[], classes=[f.name for f in folders])
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        source.paths += files
        source.labels += [label] * len(files)
    if not source.paths:
        raise HasteError(f"the class folders of {src} hold no .jpeg/.jpg/.png images")
    return source


def list_coco(src: Path, split: str, captions_per_image: int) -> Source:
    annotations = src / "annotations" / f"captions_{split}.json"
    if not annotations.is_file():
        raise HasteError(f"{annotations} does not exist; expected MS-COCO's annotations/captions_{split}.json")
    data = json.loads(annotations.read_text())
    by_image: dict[int, list[tuple[int, str]]] = {}
    for note in data["annotations"]:
        by_image.setdefault(note["image_id"], []).append((note["id"], note["caption"].strip()))
    files = {image["id"]: image["file_name"] for image in data["images"]}
    source = Source(paths=[])
    for image_id in sorted(by_image):
        notes = sorted(by_image[image_id])
        if len(notes) >= captions_per_image:
            source.paths.append(src / split / files[image_id])
            source.captions.append([text for _, text in notes[:captions_per_image]])
    if not source.paths:
        raise HasteError(f"no image in {annotations} has {captions_per_image} captions")
    return source


class CropReader(torch.utils.data.Dataset):
    """Decoded, centre-cropped images (uint8 3×R×R) of a list of files, for a DataLoader's workers."""

    def __init__(self, paths: list[Path], resolution: int) -> None:
        self.paths, self.resolution = paths, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                crop = adm_center_crop(image, self.resolution)
        except (OSError, ValueError) as exc:
            raise HasteError(f"cannot read image {path} ({exc}); remove or replace it and run again") from None
        return torch.from_numpy(np.array(crop)).permute(2, 0, 1)


def _encode(vae: Any, images: torch.Tensor, batch: int, device: torch.device) -> np.ndarray:
    from haste_core.data.vae import encode_moments

    parts = [encode_moments(vae, images[i : i + batch].to(device)).cpu() for i in range(0, len(images), batch)]
    return torch.cat(parts).numpy()


def _text_fields(encoder: Any, captions: list[list[str]]) -> dict[str, np.ndarray]:
    per_image = len(captions[0])
    tokens, mask, pooled = encoder.encode([text for group in captions for text in group])
    shape = (len(captions), per_image)
    return {
        "text": tokens.reshape(*shape, *tokens.shape[1:]).cpu().numpy().astype(np.float16),
        "text_mask": mask.reshape(*shape, -1).cpu().numpy(),
        "pooled": pooled.reshape(*shape, -1).cpu().numpy().astype(np.float16),
    }


def make_shard(shard: int, items: range, source: Source, args: PrepareSettings, vae: Any, encoder: Any,
               device: torch.device, progress: Any) -> dict[str, Any]:  # fmt: skip
    """Crop, encode and write one shard; returns its record (count and checksums)."""
    loader = torch.utils.data.DataLoader(
        CropReader([source.paths[i] for i in items], args.resolution), batch_size=args.batch, num_workers=args.workers
    )
    crops = []
    for images in loader:
        crops.append(images)
        if progress is not None:
            progress.update(len(images))
    images = torch.cat(crops)
    fields: dict[str, np.ndarray] = {"images": images.numpy(), "latents": _encode(vae, images, args.batch, device)}
    if args.flip:
        fields["latents_flip"] = _encode(vae, images.flip(-1), args.batch, device)
    if args.kind == "imagenet":
        fields["labels"] = np.asarray([source.labels[i] for i in items], dtype=np.int64)
    else:
        fields.update(_text_fields(encoder, [source.captions[i] for i in items]))
    files = {name: save_array(shard_file(args.dst, name, shard), array) for name, array in fields.items()}
    record = {"count": len(items), "files": files}
    path = args.dst / RECORDS / f"{shard:05d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record))
    temporary.replace(path)
    return record


def _settings(args: PrepareSettings, source: Source) -> dict[str, Any]:
    settings = {"kind": args.kind, "resolution": args.resolution, "vae": args.vae, "flip": args.flip,
                "shard_size": args.shard_size, "num_items": len(source.paths)}  # fmt: skip
    if args.kind == "coco":
        settings.update(split=args.split, captions_per_image=args.captions, text_model=args.text_model)
    return settings


def _check_resumable(dst: Path, settings: dict[str, Any]) -> None:
    path = dst / MANIFEST
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    changed = {key: (old.get(key), value) for key, value in settings.items() if old.get(key) != value}
    if changed:
        details = ", ".join(f"{key}: {was!r} -> {now!r}" for key, (was, now) in changed.items())
        raise HasteError(f"{dst} was prepared with other settings ({details}); use a new folder or the same settings")


def prepare(args: PrepareSettings, env: distributed.DistEnv, encoder: Any = None) -> dict[str, Any] | None:
    """Prepare ``args.dst`` (rank 0 returns the manifest, other ranks None); ``encoder``: a caption encoder to use
    instead of loading ``args.text_model`` (coco)."""
    from tqdm import tqdm

    from haste_core.data.vae import load_vae

    source = list_imagenet(args.src) if args.kind == "imagenet" else list_coco(args.src, args.split, args.captions)
    if args.limit:
        source = Source(source.paths[: args.limit], source.labels[: args.limit], source.classes,
                        source.captions[: args.limit])  # fmt: skip
    settings = _settings(args, source)
    _check_resumable(args.dst, settings)
    distributed.barrier()
    shards = [
        range(s, min(s + args.shard_size, len(source.paths))) for s in range(0, len(source.paths), args.shard_size)
    ]
    mine = [s for s in range(len(shards)) if s % env.world_size == env.rank]
    todo = [s for s in mine if not shard_complete(args.dst, s, len(shards[s]))]
    if env.is_main:
        args.dst.mkdir(parents=True, exist_ok=True)
        write_manifest(args.dst, {"format": FORMAT, **settings, "complete": False, "shards": []})
        done = (
            len(shards) - len(todo)
            if env.world_size == 1
            else sum((args.dst / RECORDS / f"{s:05d}.json").is_file() for s in range(len(shards)))
        )
        log.info(
            f"{len(source.paths)} items in {len(shards)} shards ({done} already done), {env.world_size} process(es)"
        )
    vae = load_vae(args.vae, env.device) if todo else None
    if args.kind == "coco" and encoder is None and (todo or env.is_main):
        from haste_core.data.text_encoder import OpenCLIPText

        encoder = OpenCLIPText.load(args.text_model, args.text_weights, env.device)
    total = sum(len(shards[s]) for s in todo)
    progress = tqdm(total=total, unit="img", desc=f"prepare {args.kind}", disable=not env.is_main)
    for shard in todo:
        make_shard(shard, shards[shard], source, args, vae, encoder, env.device, progress)
    progress.close()
    distributed.barrier()
    if not env.is_main:
        return None
    records = [json.loads((args.dst / RECORDS / f"{s:05d}.json").read_text()) for s in range(len(shards))]
    manifest = {"format": FORMAT, **settings, "complete": True, "shards": records, "command": prepare_command(args),
                "latent_shape": _latent_shape(args.dst), "num_classes": len(source.classes),
                "classes": source.classes}  # fmt: skip
    if args.kind == "coco":
        tokens, mask, pooled = encoder.encode([""])
        manifest["null_caption"] = {
            "text": save_array(args.dst / "null_caption" / "text.npy", tokens[0].cpu().numpy().astype(np.float16)),
            "text_mask": save_array(args.dst / "null_caption" / "text_mask.npy", mask[0].cpu().numpy()),
            "pooled": save_array(args.dst / "null_caption" / "pooled.npy", pooled[0].cpu().numpy().astype(np.float16)),
        }
        manifest.update(text_len=int(tokens.shape[1]), text_dim=int(tokens.shape[2]), pooled_dim=int(pooled.shape[1]))
    write_manifest(args.dst, manifest)
    log.info(f"done: {manifest['num_items']} items in {args.dst} (manifest {args.dst / MANIFEST})")
    return manifest


def shard_complete(dst: Path, shard: int, count: int) -> bool:
    """Whether shard ``shard`` was finished and its files are still whole: its record exists and every file it
    lists is a readable ``.npy`` of ``count`` items whose size is what its header says (an empty or truncated
    file fails here). A bad shard's record is removed, so the shard is made again."""
    record_path = dst / RECORDS / f"{shard:05d}.json"
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
        whole = record["count"] == count and all(
            np.load(shard_file(dst, name, shard), mmap_mode="r").shape[0] == count for name in record["files"]
        )
    except (OSError, ValueError, EOFError, KeyError, TypeError):  # missing, empty, truncated, or not an array
        whole = False
    if not whole:
        log.warning(f"shard {shard} of {dst} is damaged or incomplete: making it again")
        record_path.unlink()
    return whole


def prepare_command(args: PrepareSettings) -> str:
    """The ``haste prepare`` command that makes (and, run again, checks and repairs) this folder."""
    defaults = PrepareSettings(kind=args.kind, src=args.src, dst=args.dst)
    flags = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in
             ("resolution", "vae", "shard_size", "limit", "split", "captions", "text_model", "text_weights")
             if getattr(args, name) != getattr(defaults, name) and (args.kind == "coco" or name not in
             ("split", "captions", "text_model", "text_weights"))]  # fmt: skip
    flags += ["--flip"] if args.flip else []
    return " ".join(["haste prepare", args.kind, str(Path(args.src).resolve()), str(Path(args.dst).resolve()), *flags])


def _latent_shape(dst: Path) -> list[int]:
    moments = np.load(shard_file(dst, "latents", 0), mmap_mode="r")
    return [moments.shape[1] // 2, moments.shape[2], moments.shape[3]]
