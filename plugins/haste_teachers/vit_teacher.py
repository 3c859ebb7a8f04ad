"""What every pretrained ViT teacher shares: settings, preprocessing, weights, and encoding with captured attention.

A family (DINOv2 and MAE through timm, CLIP through open_clip) supplies the unmodified library model and says
where its blocks, final norm and attention modules are; this base runs it. ``encode`` runs only as many blocks
as the deepest one requested (the library's own ``forward_intermediates`` with ``stop_early``), and reads the
pre-softmax attention logits of the requested blocks with forward hooks on the library's attention modules,
registered for that call only: no library source is patched and every block keeps its fused attention.
Shapes: B batch, N tokens, D width, H heads, P prefix (class and register) tokens.
"""

from __future__ import annotations

import functools
import logging
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haste_core import DataSpec, RecipeError, StudentSpec, Teacher, TeacherOutput, TeacherSpec, attention_logits
from haste_core.weights import hub as weights_lib

log = logging.getLogger("haste")

ResizeMode = Literal["bicubic", "bilinear", "nearest", "area"]
EXAMPLE_STUDENT_GRID = 4  # contract tests: a 4×4 patch grid (56 px for /14 models, 64 px for /16)
# Logits sink: (block index, q B×H×N×hd, k B×H×N×hd, scale) -> None, called from inside the hooks.
Sink = Callable[[int, Tensor, Tensor, float], None]


@dataclass(frozen=True)
class Dims:
    """A teacher's architecture, read from the library model (built on the meta device: no memory, no weights)."""

    depth: int
    embed_dim: int
    num_heads: int
    patch_size: int
    prefix_tokens: int  # class (and register) tokens in front of the patch tokens


class ViTTeacher(Teacher):
    """Base of the pretrained ViT teachers. Registered names pass ``registered_as`` and the library model id."""

    family: ClassVar[str] = "vit"

    @dataclass(kw_only=True, frozen=True)
    class Config:
        weights: str = "hub"  # hub (library hub file, via the HF cache) | none (random: tests) | a weights file
        image_size: int = 0  # teacher input side in px; 0: student grid × patch (so the grids match)
        resize: ResizeMode = "bicubic"  # how images are resized to image_size (reference: bicubic)
        antialias: bool = False  # the reference resizes without antialiasing

        def __post_init__(self) -> None:
            problem = weights_lib.check_setting(self.weights)
            if problem:
                raise RecipeError(problem, "weights")
            if self.image_size < 0:
                message = f"must be 0 (match the student's grid) or a size in px, got {self.image_size}"
                raise RecipeError(message, "image_size")

    # --- what a family provides ---------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def build_backbone(cls, config: Any, image_size: int, **fixed: Any) -> nn.Module:
        """The unmodified library model for ``image_size`` px inputs, randomly initialised, on the current
        default device (describe() calls it under ``torch.device("meta")``)."""

    @classmethod
    @abstractmethod
    def dims(cls, backbone: nn.Module) -> Dims:
        """Depth, width, heads, patch size and prefix tokens of a backbone."""

    @classmethod
    @abstractmethod
    def hub_file(cls, config: Any, **fixed: Any) -> weights_lib.HubFile | None:
        """The hub file ``weights: hub`` loads, or None if the library has none for this config."""

    @classmethod
    @abstractmethod
    def norm_constants(cls, config: Any, **fixed: Any) -> tuple[Sequence[float], Sequence[float]]:
        """Per-channel mean and std the weights were trained with (images in [0, 1])."""

    @abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The backbone's transformer blocks, in order."""

    @abstractmethod
    def final_norm(self) -> nn.Module:
        """The norm applied after the last block (block -1 is its output)."""

    @abstractmethod
    def intermediates(self, pixels: Tensor, indices: list[int]) -> list[Tensor]:
        """Patch tokens (B×N×D, prefix tokens removed) after each block in ``indices``, running no deeper."""

    @abstractmethod
    def hook_attention(self, index: int, sink: Sink) -> list[Any]:
        """Register hooks on block ``index``'s attention that call ``sink(index, q, k, scale)`` with the
        queries and keys the module attends with; return the hook handles."""

    @abstractmethod
    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A weights file's tensors in this backbone's layout, positional embedding resampled to its grid."""

    # --- shared -------------------------------------------------------------------------------------------

    @classmethod
    def example_data(cls) -> DataSpec:
        return DataSpec(x_shape=(4, 8, 8), image_shape=(3, 32, 32), num_classes=10, num_items=64)

    @classmethod
    def example_config(cls, **specs: Any) -> Any:
        return cls.Config(weights="none")

    @classmethod
    def hub_files(cls, config: Any, **fixed: Any) -> list[weights_lib.HubFile]:
        """Files ``haste prefetch`` fetches for this config (none unless ``weights: hub``)."""
        hub = cls.hub_file(config, **fixed) if config.weights == weights_lib.HUB else None
        return [hub] if hub is not None else []

    @classmethod
    def describe(cls, config: Any, *, data: DataSpec, student: StudentSpec, **fixed: Any) -> TeacherSpec:
        name = fixed["registered_as"]
        if data.image_shape[0] != 3:
            raise RecipeError(f"{name} reads RGB images; the data gives {data.image_shape[0]} channels")
        dims = _meta_dims(cls, tuple(sorted(fixed.items())), config)
        if config.image_size % dims.patch_size:
            raise RecipeError(
                f"{config.image_size} px is not a multiple of {name}'s patch size {dims.patch_size}; use 0 "
                f"(match the student: {student.grid * dims.patch_size} px) or a multiple of {dims.patch_size}",
                "image_size",
            )
        if config.weights == weights_lib.HUB and cls.hub_file(config, **fixed) is None:
            raise RecipeError(f"{name} has no hub file for these settings; give the path of a weights file", "weights")
        side = config.image_size or student.grid * dims.patch_size
        return TeacherSpec(
            name=name,
            depth=dims.depth,
            embed_dim=dims.embed_dim,
            num_heads=dims.num_heads,
            grid=side // dims.patch_size,
            token_grid=student.grid,
        )

    def __init__(
        self,
        config: Any,
        *,
        data: DataSpec,
        student: StudentSpec,
        spec: TeacherSpec,
        resolve_weights: Callable[[str, str], Path | None] | None = None,
        **fixed: Any,
    ) -> None:
        super().__init__()
        self.config, self.name, self.fixed = config, spec.name, fixed
        self.depth, self.embed_dim, self.num_heads = spec.depth, spec.embed_dim, spec.num_heads
        self.grid, self.token_grid = spec.grid, spec.token_grid
        hub = self.hub_file(config, **fixed)
        path = weights_lib.resolve(
            config.weights, kind="teacher", name=self.name, hub=hub, resolve_weights=resolve_weights
        )
        self.input_side = spec.grid * _meta_dims(type(self), tuple(sorted(fixed.items())), config).patch_size
        self.backbone = self.build_backbone(config, self.input_side, **fixed)
        self.prefix_tokens = self.dims(self.backbone).prefix_tokens
        if path is None:
            log.warning(f"teacher {self.name}: weights 'none', using a random network (only for tests)")
        else:
            state = self.convert_state_dict(weights_lib.read_state_dict(path))
            weights_lib.check_fits(self.backbone, state, path, f"teacher {self.name}")
            self.backbone.load_state_dict(state)
            log.info(f"teacher {self.name}: loaded weights from {path}")
        mean, std = self.norm_constants(config, **fixed)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ViTTeacher:
        """A teacher stays in eval mode whatever it is asked (dropout and friends stay off)."""
        return super().train(False)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 B×3×H×W → normalised float pixels at the teacher's input side (``image_size``)."""
        pixels = (images.float() / 255.0 - self.mean) / self.std
        if pixels.shape[-2:] != (self.input_side, self.input_side):
            pixels = F.interpolate(
                pixels,
                size=(self.input_side, self.input_side),
                mode=self.config.resize,
                antialias=self.config.antialias and self.config.resize in ("bilinear", "bicubic"),
                align_corners=False if self.config.resize in ("bilinear", "bicubic") else None,
            )
        return pixels

    @torch.no_grad()
    def encode(self, images: Tensor, blocks: frozenset[int], attn_blocks: frozenset[int]) -> TeacherOutput:
        """Patch tokens of ``blocks`` (-1: after the final norm) and patch-to-patch attention logits of
        ``attn_blocks``; runs blocks 0..deepest requested only."""
        token_blocks = {self.depth - 1 if b == -1 else b for b in blocks}
        bad = sorted(b for b in token_blocks | set(attn_blocks) if not 0 <= b < self.depth)
        if bad:
            raise ValueError(f"{self.name} has blocks 0..{self.depth - 1} (and -1 for final tokens); asked for {bad}")
        out = TeacherOutput()
        if not token_blocks and not attn_blocks:
            return out
        indices = sorted(token_blocks | {max(token_blocks | set(attn_blocks))})
        with self.capture(attn_blocks) as logits:
            tokens = dict(zip(indices, self.intermediates(self.preprocess(images), indices), strict=True))
        out.attn_logits = dict(sorted(logits.items()))
        for block in blocks:
            x_BND = self.final_norm()(tokens[self.depth - 1]) if block == -1 else tokens[block]
            out.tokens[block] = self.resample_tokens(x_BND)
        return out

    @contextmanager
    def capture(self, attn_blocks: frozenset[int]) -> Iterator[dict[int, Tensor]]:
        """Hooks on the attention of ``attn_blocks`` for one forward; yields {block: B×H×N×N patch logits}."""
        logits: dict[int, Tensor] = {}
        first = self.prefix_tokens

        def sink(index: int, q_BHND: Tensor, k_BHND: Tensor, scale: float) -> None:
            logits[index] = attention_logits(q_BHND[:, :, first:], k_BHND[:, :, first:], scale)

        handles = [handle for index in sorted(attn_blocks) for handle in self.hook_attention(index, sink)]
        try:
            yield logits
        finally:
            for handle in handles:
                handle.remove()

    def resample_tokens(self, x_BND: Tensor) -> Tensor:
        """Tokens on the teacher's grid → the student's grid (area-averaged down, bilinear up); as is if equal."""
        if self.token_grid == self.grid:
            return x_BND
        B, _, D = x_BND.shape
        x_BDHW = x_BND.transpose(1, 2).reshape(B, D, self.grid, self.grid)
        size = (self.token_grid, self.token_grid)
        if self.token_grid < self.grid:
            x_BDHW = F.interpolate(x_BDHW, size=size, mode="area")
        else:
            x_BDHW = F.interpolate(x_BDHW, size=size, mode="bilinear", align_corners=False)
        return x_BDHW.flatten(2).transpose(1, 2)


def _meta_dims(cls: type[ViTTeacher], fixed: tuple[tuple[str, Any], ...], config: Any) -> Dims:
    return _meta_dims_cached(cls, fixed, _arch_settings(config))


def _arch_settings(config: Any) -> tuple[tuple[str, Any], ...]:
    """The config fields that can change the architecture (everything but weights and preprocessing)."""
    skip = {"weights", "image_size", "resize", "antialias"}
    return tuple(sorted((k, v) for k, v in vars(config).items() if k not in skip))


@functools.lru_cache(maxsize=64)
def _meta_dims_cached(cls: type[ViTTeacher], fixed: tuple[tuple[str, Any], ...], arch: tuple[Any, ...]) -> Dims:
    config = cls.Config(weights=weights_lib.NONE, **dict(arch))
    with torch.device("meta"):
        backbone = cls.build_backbone(config, 224, **dict(fixed))  # any valid size: dims do not depend on it
    return cls.dims(backbone)
