"""SiT (Ma et al. 2024): a DiT backbone trained as a flow/velocity model, at every published size.

Registered as ``sit_{s,b,l,xl}_{2,4,8}`` (the paper's S/B/L/XL with patch 2, 4 or 8) plus ``sit_micro_*`` and
``sit_tiny_*`` for CPU work. ``forward`` returns the prediction (same shape as x_t; no learned sigma), and the
output tokens and pre-softmax attention logits of the blocks named in ``capture``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from haste_core import Capture, DataSpec, RecipeError, Registry, Student, StudentOutput, StudentSpec, hookimpl
from haste_students.blocks import (
    AdaLNBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    init_dit_weights,
    patch_student_spec,
    record_block,
    sincos_pos_embed,
    unpatchify,
)


@dataclass(frozen=True)
class SiTArch:
    """The dimensions a registered name stands for."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int


# (depth, width, heads) and patch sizes of the SiT/DiT papers
PUBLISHED_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
PUBLISHED_PATCHES = (2, 4, 8)
# ours, small enough to train on a CPU (the digits demo uses sit_micro_2)
CPU_SIZES = {"micro": (4, 64, 4), "tiny": (6, 128, 4)}
CPU_PATCHES = (1, 2, 4)
SIZES = {**CPU_SIZES, **PUBLISHED_SIZES}


class SiT(Student):
    """SiT: patch embedding + fixed sin-cos positions, adaLN-Zero blocks conditioned on time and class.

    Subclasses (DiT) change the registered family name and pass the output channels (``learn_sigma``) and the
    scale of t fed to the timestep embedder (``time_scale``).
    """

    family: ClassVar[str] = "sit"
    zero_init = True

    @dataclass(kw_only=True, frozen=True)
    class Config:
        class_dropout_prob: float = 0.1  # labels replaced by the null class in training, for CFG
        qk_norm: bool = False  # LayerNorm on q and k per head: a known cure for long-run fp16 NaNs
        mlp_ratio: float = 4.0

        def __post_init__(self) -> None:
            if not 0.0 <= self.class_dropout_prob < 1.0:
                raise RecipeError(f"must be in [0, 1), got {self.class_dropout_prob}", "class_dropout_prob")

    @classmethod
    def describe(cls, config: Config, *, data: DataSpec, arch: SiTArch) -> StudentSpec:
        if data.text_dim:
            raise RecipeError(
                f"{cls.family} is class-conditional but the data gives text embeddings; use an mmdit_* student"
            )
        return patch_student_spec(cls.registered_name(arch), arch, data)

    @classmethod
    def registered_name(cls, arch: SiTArch) -> str:
        dims = (arch.depth, arch.hidden_size, arch.num_heads)
        # a size of a plugin's own (registry.add(name, SiT, arch=...)) is named by its dimensions in messages
        size = next((k for k, v in SIZES.items() if v == dims), "d{}w{}h{}".format(*dims))
        return f"{cls.family}_{size}_{arch.patch_size}"

    def __init__(
        self,
        config: Config,
        *,
        arch: SiTArch,
        data: DataSpec,
        spec: StudentSpec,
        learn_sigma: bool = False,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.config, self.arch = config, arch
        self.depth, self.hidden_size, self.num_heads, self.grid = (
            spec.depth,
            spec.hidden_size,
            spec.num_heads,
            spec.grid,
        )
        self.patch_size, self.channels, self.num_classes = arch.patch_size, data.x_shape[0], data.num_classes
        self.x_embedder = PatchEmbed(self.channels, arch.hidden_size, arch.patch_size)
        self.t_embedder = TimestepEmbedder(arch.hidden_size)
        self.y_embedder = (
            LabelEmbedder(data.num_classes, arch.hidden_size, config.class_dropout_prob) if data.num_classes else None
        )
        self.register_buffer("pos_embed", sincos_pos_embed(arch.hidden_size, self.grid)[None])
        self.blocks = nn.ModuleList(
            AdaLNBlock(arch.hidden_size, arch.num_heads, config.mlp_ratio, config.qk_norm) for _ in range(arch.depth)
        )
        self.learn_sigma, self.time_scale = learn_sigma, time_scale
        self.out_channels = self.channels * (2 if self.learn_sigma else 1)
        self.final_layer = FinalLayer(arch.hidden_size, arch.patch_size, self.out_channels)
        init_dit_weights(self)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, capture: Capture | None = None) -> StudentOutput:
        capture = capture or Capture()
        x_BND = self.x_embedder(x_t) + self.pos_embed
        c_BD = self.t_embedder(t if self.time_scale == 1.0 else t * self.time_scale)
        if self.y_embedder is not None:
            c_BD = c_BD + self.y_embedder(cond)
        out = StudentOutput(pred=x_t)
        for index, block in enumerate(self.blocks):
            x_BND, logits = block(x_BND, c_BD, capture_attn=index in capture.attn)
            record_block(out, capture, index, x_BND, logits)
        out.pred = unpatchify(self.final_layer(x_BND, c_BD), self.patch_size, self.out_channels)
        return out

    def null_cond(self, cond: Tensor) -> Tensor:
        """The null class (index ``num_classes``) for every sample."""
        return torch.full_like(cond, self.num_classes)


def register_sizes(registry: Registry, cls: type[SiT]) -> None:
    """Register ``cls`` as ``{family}_{size}_{patch}`` for every size and each of its patch sizes."""
    for size, (depth, width, heads) in SIZES.items():
        for patch in CPU_PATCHES if size in CPU_SIZES else PUBLISHED_PATCHES:
            arch = SiTArch(depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
            registry.add(f"{cls.family}_{size}_{patch}", cls, arch=arch)


@hookimpl
def haste_register_students(registry: Registry) -> None:
    register_sizes(registry, SiT)
