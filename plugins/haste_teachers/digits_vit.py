"""The embedded default teacher: a small vision transformer that haste trains itself as a digit classifier.

The first time it is needed it trains on a ``digits`` training split (by default the data set's default one;
seeded, with progress output, well
under a minute on 2 CPU cores; under torchrun one process per machine trains while the others wait) and is
cached under ``$HASTE_CACHE/digits_vit/``. It has the ``Teacher`` interface that DINOv2 has: patch tokens of any
block, final normalised patch tokens (block -1), and pre-softmax attention logits of any block, with the class
token removed, running only as many blocks as needed.
Shapes: B batch, N patch tokens, D width, H heads.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haste_core import (
    DataSpec,
    HasteError,
    RecipeError,
    Registry,
    StudentSpec,
    Teacher,
    TeacherOutput,
    TeacherSpec,
    attention_logits,
    hookimpl,
)
from haste_core.weights.cache import cache_dir
from haste_core.weights.hub import check_fits

log = logging.getLogger("haste")

# Architecture: 8×8 digits in 2×2 patches → a 4×4 grid of patch tokens plus a class token.
IMAGE_SIDE = 8
PATCH_SIZE = 2
EMBED_DIM = 64
DEPTH = 4
NUM_HEADS = 4
MLP_RATIO = 2
NUM_CLASSES = 10
LN_EPS = 1e-6
# Training recipe: 96.4-97.2% held-out accuracy over seeds 0-4, in 22-28 s on 2 CPU cores.
TRAIN_EPOCHS = 40
TRAIN_BATCH = 32
TRAIN_LR = 2e-3
TRAIN_WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
MAX_SHIFT_PX = 1  # random translation augmentation
TRAIN_SEED = 0
CACHE_FORMAT = "digits_vit/1"  # bump when the architecture or the training recipe changes


class ViTAttention(nn.Module):
    """Self-attention over class + patch tokens: fused, or explicit when its logits are captured."""

    def __init__(self) -> None:
        super().__init__()
        self.head_dim = EMBED_DIM // NUM_HEADS
        self.qkv = nn.Linear(EMBED_DIM, 3 * EMBED_DIM)
        self.proj = nn.Linear(EMBED_DIM, EMBED_DIM)

    def forward(self, x_BND: Tensor, capture: bool) -> tuple[Tensor, Tensor | None]:
        B, N, D = x_BND.shape
        q, k, v = self.qkv(x_BND).reshape(B, N, 3, NUM_HEADS, self.head_dim).permute(2, 0, 3, 1, 4)
        if not capture:
            out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(B, N, D)), None
        logits_BHNN = attention_logits(q, k, self.head_dim**-0.5)
        out = logits_BHNN.softmax(-1).to(v.dtype) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, D)), logits_BHNN


class ViTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(EMBED_DIM, eps=LN_EPS)
        self.attn = ViTAttention()
        self.norm2 = nn.LayerNorm(EMBED_DIM, eps=LN_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(EMBED_DIM, MLP_RATIO * EMBED_DIM),
            nn.GELU(),
            nn.Linear(MLP_RATIO * EMBED_DIM, EMBED_DIM),
        )

    def forward(self, x_BND: Tensor, capture: bool = False) -> tuple[Tensor, Tensor | None]:
        attn_out, logits = self.attn(self.norm1(x_BND), capture)
        x_BND = x_BND + attn_out
        return x_BND + self.mlp(self.norm2(x_BND)), logits


class DigitsViTNet(nn.Module):
    """The classifier network: patch embedding, class token, learned positions, blocks, norm, head."""

    def __init__(self, image_side: int = IMAGE_SIDE, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        grid = image_side // patch_size
        self.patch_embed = nn.Conv2d(1, EMBED_DIM, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, EMBED_DIM) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(EMBED_DIM, eps=LN_EPS)
        self.head = nn.Linear(EMBED_DIM, NUM_CLASSES)

    def embed(self, pixels_BCHW: Tensor) -> Tensor:
        x_BND = self.patch_embed(pixels_BCHW).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x_BND.shape[0], -1, -1), x_BND], dim=1) + self.pos_embed

    def classify(self, pixels_BCHW: Tensor) -> Tensor:
        x_BND = self.embed(pixels_BCHW)
        for block in self.blocks:
            x_BND, _ = block(x_BND)
        return self.head(self.norm(x_BND)[:, 0])


def normalise(images_uint8: Tensor) -> Tensor:
    """uint8 digits → floats in [-1, 1], the scaling the network was trained with."""
    return images_uint8.float() / 127.5 - 1


class DigitsViT(Teacher):
    """A 4-block, 4-head, 64-wide ViT on 2×2 patches (16 patch tokens), trained by haste on the digits."""

    name = "digits_vit"
    image_side = IMAGE_SIDE  # what the network is trained on (a subclass trains on larger images)
    patch_size = PATCH_SIZE

    @dataclass(kw_only=True, frozen=True)
    class Config:
        weights: str = "cache"  # cache: trained once and reused; none: random (tests); or a .pt file
        # the digits split it trains on (with weights: cache); keep equal to the data's, so that the teacher
        # never sees the student's held-out digits
        heldout_fraction: float = 0.2
        split_seed: int = 0

        def __post_init__(self) -> None:
            if not 0.0 < self.heldout_fraction < 1.0:
                raise RecipeError(f"must be between 0 and 1, got {self.heldout_fraction}", "heldout_fraction")

    @classmethod
    def example_data(cls) -> DataSpec:
        return DataSpec(
            x_shape=(1, cls.image_side, cls.image_side),
            image_shape=(1, cls.image_side, cls.image_side),
            num_classes=10,
            num_items=64,
        )

    @classmethod
    def example_config(cls, **specs: Any) -> Config:
        return cls.Config(weights="none")

    @classmethod
    def describe(cls, config: Config, *, data: DataSpec, student: StudentSpec) -> TeacherSpec:
        if data.image_shape[0] != 1:
            raise RecipeError(f"{cls.name} reads 1-channel images; the data gives {data.image_shape[0]} channels")
        if config.weights not in {"cache", "none"} and not Path(config.weights).is_file():
            raise RecipeError(
                f"weights file {config.weights!r} does not exist; give 'cache' (train once and reuse), "
                f"'none' (random, for tests) or the path of a {cls.name} .pt file",
                "weights",
            )
        return TeacherSpec(name=cls.name, depth=DEPTH, embed_dim=EMBED_DIM, num_heads=NUM_HEADS, grid=student.grid)

    def __init__(
        self, config: Config, *, data: DataSpec, student: StudentSpec, spec: TeacherSpec, resolve_weights: Any = None
    ) -> None:
        super().__init__()
        self.config = config
        self.depth, self.embed_dim, self.num_heads, self.grid = (
            spec.depth,
            spec.embed_dim,
            spec.num_heads,
            spec.grid,
        )
        with torch.random.fork_rng(devices=[]):  # a seeded random start that leaves the caller's RNG alone
            torch.manual_seed(TRAIN_SEED)
            self.net = DigitsViTNet(self.image_side, self.patch_size)
        self.heldout_accuracy = self._load_weights(config, resolve_weights)
        self.input_side = self.grid * self.patch_size
        if self.grid != self.image_side // self.patch_size:  # match the student's grid: resample positions once, here
            self.net.pos_embed = nn.Parameter(_resample_positions(self.net.pos_embed.data, self.grid))
        self.eval().requires_grad_(False)

    def _load_weights(self, config: Config, resolve_weights: Any) -> float | None:
        if config.weights == "none":
            log.warning(f"teacher {self.name}: weights 'none', using a random network (only for tests)")
            return None
        path = Path(config.weights) if config.weights != "cache" else None
        if path is None and resolve_weights is not None:
            path = resolve_weights("teacher", self.name)
            if path is not None and not Path(path).is_file():
                raise HasteError(f"haste_resolve_weights offered {path} for teacher {self.name}, but it does not exist")
        cached = path is None
        if cached:
            path = self.cached_weights(config)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, empty, or not a torch file at all
            detail = f"{type(exc).__name__}: not a file torch.load reads with weights_only=True"
            if not cached:
                raise HasteError(
                    f"teacher.weights: cannot read {path} as {self.name} weights ({detail}); give a file that "
                    f"haste wrote (the {self.name} cache), or weights: cache to use (and make) the cached ones"
                ) from None
            log.warning(
                f"teacher {self.name}: the cached weights {path} are unreadable ({detail}); training them again"
            )
            Path(path).unlink(missing_ok=True)
            path = self.cached_weights(config)
            state = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state_dict, dict):
            raise HasteError(f"{path} does not hold a {self.name} state dict")
        check_fits(self.net, state_dict, path, self.name)
        self.net.load_state_dict(state_dict)
        return state.get("heldout_accuracy") if isinstance(state, dict) else None

    def cached_weights(self, config: Config) -> Path:
        """The cached trained weights (trained and written the first time)."""
        return cached_weights(config.heldout_fraction, config.split_seed)

    def encode(self, images: Tensor, blocks: frozenset[int], attn_blocks: frozenset[int]) -> TeacherOutput:
        """Tokens of ``blocks`` (-1: final norm) and logits of ``attn_blocks``, patch tokens only."""
        wanted = {self.depth - 1 if b == -1 else b for b in blocks} | set(attn_blocks)
        bad = sorted(b for b in wanted if not 0 <= b < self.depth) + sorted(b for b in attn_blocks if b < 0)
        if bad:
            raise ValueError(f"{self.name} has blocks 0..{self.depth - 1} (and -1 for final tokens); asked for {bad}")
        pixels = normalise(images)
        if pixels.shape[-1] != self.input_side:
            pixels = F.interpolate(
                pixels, size=(self.input_side, self.input_side), mode="bilinear", align_corners=False
            )
        out = TeacherOutput()
        x_BND = self.net.embed(pixels)
        for index in range(max(wanted, default=-1) + 1):  # only as deep as needed
            x_BND, logits = self.net.blocks[index](x_BND, capture=index in attn_blocks)
            if logits is not None:
                out.attn_logits[index] = logits[:, :, 1:, 1:]  # patch queries over patch keys
            if index in blocks:
                out.tokens[index] = x_BND[:, 1:]
        if -1 in blocks:
            out.tokens[-1] = self.net.norm(x_BND)[:, 1:]
        return out


def _resample_positions(pos_1ND: Tensor, grid: int) -> Tensor:
    cls_pos, patch_pos = pos_1ND[:, :1], pos_1ND[:, 1:]
    old = math.isqrt(patch_pos.shape[1])
    table = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, table.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def trained_cache_path(cache_format: str, heldout_fraction: float, split_seed: int, seed: int) -> Path:
    """Where a teacher trained by haste on a digits split is cached: ``<cache>/<teacher>/<format>_<split>_<seed>``
    (``cache_format`` is ``"<teacher>/<version>"``)."""
    split = f"heldout{heldout_fraction:g}_split{split_seed}"
    teacher = cache_format.split("/")[0]
    return cache_dir() / teacher / f"{cache_format.replace('/', '_v')}_{split}_seed{seed}.pt"


def cached_or_trained(path: Path, cache_format: str, train: Callable[[], tuple[dict[str, Tensor], float]]) -> Path:
    """``path``; when it is missing, ``train()``'s weights and held-out accuracy are written there first
    (atomically: a unique temporary file, then a rename)."""
    if not path.is_file():
        state_dict, accuracy = train()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"format": cache_format, "state_dict": state_dict, "heldout_accuracy": accuracy}, temporary)
        temporary.replace(path)
        log.info(f"teacher {cache_format.split('/')[0]}: cached at {path}")
    return path


def cache_path(heldout_fraction: float = 0.2, split_seed: int = 0) -> Path:
    """Where the weights trained on this digits split are cached (the name carries format and split)."""
    return trained_cache_path(CACHE_FORMAT, heldout_fraction, split_seed, TRAIN_SEED)


def cached_weights(heldout_fraction: float = 0.2, split_seed: int = 0) -> Path:
    """The cached weights trained on this digits split; trained and written (atomically) if missing."""
    path = cache_path(heldout_fraction, split_seed)
    return cached_or_trained(path, CACHE_FORMAT, lambda: train_digits_vit(heldout_fraction, split_seed))


def train_digits_vit(heldout_fraction: float = 0.2, split_seed: int = 0) -> tuple[dict[str, Tensor], float]:
    """Train the classifier on a digits training split; return its weights and held-out accuracy."""
    from haste_data.digits import load_split

    images, labels = load_split("train", heldout_fraction, split_seed)
    heldout_images, heldout_labels = load_split("heldout", heldout_fraction, split_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or threads)  # the other ranks wait meanwhile
    started = time.perf_counter()
    log.info(f"teacher digits_vit: training on {len(labels)} digits for {TRAIN_EPOCHS} epochs (first use only)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SEED)
        net = DigitsViTNet()
        optimizer = torch.optim.AdamW(net.parameters(), lr=TRAIN_LR, weight_decay=TRAIN_WEIGHT_DECAY)
        steps_per_epoch = math.ceil(len(labels) / TRAIN_BATCH)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=TRAIN_LR, total_steps=TRAIN_EPOCHS * steps_per_epoch, pct_start=0.1
        )
        for epoch in range(TRAIN_EPOCHS):
            net.train()
            order = torch.randperm(len(labels))
            for start in range(0, len(labels), TRAIN_BATCH):
                index = order[start : start + TRAIN_BATCH]
                pixels = _random_shift(normalise(images[index]))
                loss = F.cross_entropy(net.classify(pixels), labels[index], label_smoothing=LABEL_SMOOTHING)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            if (epoch + 1) % 10 == 0 or epoch + 1 == TRAIN_EPOCHS:
                accuracy = heldout_accuracy(net, heldout_images, heldout_labels)
                log.info(
                    f"teacher digits_vit: epoch {epoch + 1}/{TRAIN_EPOCHS}, loss {loss.item():.3f}, "
                    f"held-out accuracy {accuracy:.1%} ({time.perf_counter() - started:.0f} s)"
                )
    torch.set_num_threads(threads)
    return net.state_dict(), accuracy


def _random_shift(pixels_BCHW: Tensor) -> Tensor:
    """Translate each image by up to MAX_SHIFT_PX pixels (background -1 fills the border)."""
    B, _, side, _ = pixels_BCHW.shape
    padded = F.pad(pixels_BCHW, (MAX_SHIFT_PX,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * MAX_SHIFT_PX + 1, (2, B, 1, 1))
    rows = torch.arange(side).view(1, side, 1) + dy
    cols = torch.arange(side).view(1, 1, side) + dx
    return padded[torch.arange(B).view(B, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


@torch.no_grad()
def heldout_accuracy(net: DigitsViTNet, images: Tensor, labels: Tensor) -> float:
    net.eval()
    return (net.classify(normalise(images)).argmax(-1) == labels).float().mean().item()


@hookimpl
def haste_register_teachers(registry: Registry) -> None:
    registry.add("digits_vit", DigitsViT)
