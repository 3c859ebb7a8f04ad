"""MMDiT (Esser et al. 2024, SD3; as adapted by REPA/HASTE for MS-COCO): joint text-image attention.

Two token streams, caption tokens and image tokens, each with its own adaLN-Zero weights (modulation, q/k/v,
output projection, MLP), meet in one joint attention per block: q, k and v of both streams are concatenated
along the token axis (text first), padded caption tokens are masked out as keys, and the result is split back.
In the last block the text stream is "pre-only" (it gives keys and values, and its output is not computed).

Registered as ``mmdit_d{depth}`` with REPA's rule width = 32·depth and heads = depth (head dim 32), patch 2:
``mmdit_d24`` is the reference configuration, ``mmdit_d12`` its half, ``mmdit_d28``/``mmdit_d32`` larger ones
and ``mmdit_d2``/``mmdit_d4`` CPU sizes. Conditioning: precomputed caption embeddings of any width
(``context_embedder``: Linear text_dim → D) with a padding mask, an optional pooled caption vector (an MLP added
to the timestep embedding; ``pooled: false`` drops it, as the reference has none), and a learned null caption for
classifier-free guidance. Unlike the reference, the initialisation is adaLN-Zero (the prediction starts at exactly
0), and padded caption tokens are masked as keys (``attend_padding: true`` attends to all of them, as the
reference). Checkpoints of the reference import and export with ``from_published``/``to_published`` (key map
below; its null caption is the empty caption's embedding, supplied at import).

``capture`` gives image-token hidden states and, for attention, the logits of image queries over image keys:
the image-image block of the joint attention. The block itself normalises over text and image keys; the
alignment renormalises the captured block over image keys only (see docs/students.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haste_core import (
    Capture,
    CheckpointError,
    DataSpec,
    HasteError,
    RecipeError,
    Registry,
    Student,
    StudentOutput,
    StudentSpec,
    attention_logits,
    hookimpl,
)
from haste_students.blocks import (
    LN_EPS,
    QK_NORM_EPS,
    FinalLayer,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    init_dit_weights,
    modulate,
    patch_student_spec,
    record_block,
    sincos_pos_embed,
    unpatchify,
)

WIDTH_PER_BLOCK = 32  # REPA's MMDiT: hidden size = 32·depth, heads = depth (head dim 32)
PATCH_SIZE = 2  # REPA's MMDiT on 32×32 SD-VAE latents
DEPTHS = (2, 4, 12, 24, 28, 32)  # d24 is the reference; d2/d4 are for CPUs
NULL_INIT_STD = 0.02  # learned null caption starts like an embedding table (DiT's N(0, 0.02))


@dataclass(frozen=True)
class MMDiTArch:
    depth: int
    patch_size: int = PATCH_SIZE

    @property
    def hidden_size(self) -> int:
        return WIDTH_PER_BLOCK * self.depth

    @property
    def num_heads(self) -> int:
        return self.depth


class StreamHalf(nn.Module):
    """One stream's weights in a joint block: adaLN modulation, q/k/v, and (unless pre-only) proj and MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool, pre_only: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.pre_only = num_heads, hidden_size // num_heads, pre_only
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, (2 if pre_only else 6) * hidden_size))
        if not pre_only:
            self.proj = nn.Linear(hidden_size, hidden_size)
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
            self.mlp = Mlp(hidden_size, mlp_ratio)

    def pre(self, x_BND: Tensor, c_BD: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """q, k, v (B×H×N×d) of the modulated tokens, and the remaining modulation (gates, second shift/scale)."""
        mods = self.adaLN_modulation(c_BD).chunk(2 if self.pre_only else 6, dim=-1)
        B, N, _ = x_BND.shape
        qkv = self.qkv(modulate(self.norm1(x_BND), mods[0], mods[1]))
        q_BHND, k_BHND, v_BHND = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.q_norm(q_BHND), self.k_norm(k_BHND), v_BHND, mods[2:]

    def post(self, x_BND: Tensor, attn_BHND: Tensor, mods: tuple[Tensor, ...]) -> Tensor:
        gate1, shift2, scale2, gate2 = mods
        B, N, D = x_BND.shape
        x_BND = x_BND + gate1.unsqueeze(1) * self.proj(attn_BHND.transpose(1, 2).reshape(B, N, D))
        return x_BND + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x_BND), shift2, scale2))


class JointBlock(nn.Module):
    """Text and image streams with separate weights and one joint attention over [text; image] tokens."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool, last: bool) -> None:
        super().__init__()
        self.context = StreamHalf(hidden_size, num_heads, mlp_ratio, qk_norm, pre_only=last)
        self.image = StreamHalf(hidden_size, num_heads, mlp_ratio, qk_norm, pre_only=False)
        self.scale = self.image.head_dim**-0.5

    def forward(
        self, txt_BLD: Tensor, img_BND: Tensor, c_BD: Tensor, keep_B11K: Tensor, capture_attn: bool = False
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """``keep_B11K``: bool over the L + N keys (False = padded caption token). Returns the new text tokens
        (None in the last block), the new image tokens, and the image-image logits when captured."""
        q_txt, k_txt, v_txt, mods_txt = self.context.pre(txt_BLD, c_BD)
        q_img, k_img, v_img, mods_img = self.image.pre(img_BND, c_BD)
        q, k, v = torch.cat([q_txt, q_img], 2), torch.cat([k_txt, k_img], 2), torch.cat([v_txt, v_img], 2)
        length = txt_BLD.shape[1]
        image_logits = None
        if capture_attn:
            logits = attention_logits(q, k, self.scale).masked_fill(~keep_B11K, float("-inf"))
            out = logits.softmax(dim=-1).to(v.dtype) @ v
            image_logits = logits[:, :, length:, length:].contiguous()
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep_B11K)
        img_BND = self.image.post(img_BND, out[:, :, length:], mods_img)
        if self.context.pre_only:
            return None, img_BND, image_logits
        return self.context.post(txt_BLD, out[:, :, :length], mods_txt), img_BND, image_logits


class MMDiT(Student):
    """Text-to-image MMDiT with adaLN-Zero initialisation and a learned null caption."""

    zero_init = True

    @dataclass(kw_only=True, frozen=True)
    class Config:
        caption_dropout_prob: float = 0.1  # captions replaced by the learned null caption in training (CFG)
        qk_norm: bool = False  # LayerNorm on q and k per head: a known cure for long-run fp16 NaNs
        mlp_ratio: float = 4.0
        pooled: bool = True  # add the data's pooled caption vector to the conditioning (the reference has none)
        attend_padding: bool = False  # attend to every caption token, padding too, as the reference does

        def __post_init__(self) -> None:
            if not 0.0 <= self.caption_dropout_prob < 1.0:
                raise RecipeError(f"must be in [0, 1), got {self.caption_dropout_prob}", "caption_dropout_prob")

    @classmethod
    def example_data(cls) -> DataSpec:
        shapes = {"x_shape": (4, 16, 16), "image_shape": (3, 16, 16)}
        return DataSpec(**shapes, num_classes=0, num_items=64, text_len=5, text_dim=12, pooled_dim=6)

    @classmethod
    def describe(cls, config: Config, *, data: DataSpec, arch: MMDiTArch) -> StudentSpec:
        if not data.text_dim or not data.text_len:
            raise RecipeError(
                f"mmdit is text-conditioned but the data gives no caption embeddings (num_classes="
                f"{data.num_classes}); use a text data set such as coco, or a sit_*/dit_* student for classes"
            )
        return patch_student_spec(f"mmdit_d{arch.depth}", arch, data)

    def __init__(self, config: Config, *, arch: MMDiTArch, data: DataSpec, spec: StudentSpec) -> None:
        super().__init__()
        self.config, self.arch = config, arch
        self.depth, self.hidden_size, self.num_heads, self.grid = (
            spec.depth,
            spec.hidden_size,
            spec.num_heads,
            spec.grid,
        )
        self.patch_size, self.channels = arch.patch_size, data.x_shape[0]
        self.text_len, self.text_dim = data.text_len, data.text_dim
        self.pooled_dim = data.pooled_dim if config.pooled else 0
        width = arch.hidden_size
        self.x_embedder = PatchEmbed(self.channels, width, arch.patch_size)
        self.t_embedder = TimestepEmbedder(width)
        self.context_embedder = nn.Linear(data.text_dim, width)
        self.y_embedder = (
            nn.Sequential(nn.Linear(self.pooled_dim, width), nn.SiLU(), nn.Linear(width, width))
            if self.pooled_dim
            else None
        )
        self.null_text = nn.Parameter(torch.zeros(data.text_len, data.text_dim))
        self.null_pooled = nn.Parameter(torch.zeros(self.pooled_dim)) if self.pooled_dim else None
        self.register_buffer("pos_embed", sincos_pos_embed(width, self.grid)[None])
        self.blocks = nn.ModuleList(
            JointBlock(width, arch.num_heads, config.mlp_ratio, config.qk_norm, last=i == arch.depth - 1)
            for i in range(arch.depth)
        )
        self.final_layer = FinalLayer(width, arch.patch_size, self.channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's scheme (Xavier Linears, zero biases, zero final layer) plus zero adaLN outputs in both streams."""
        init_dit_weights(self)
        for block in self.blocks:
            for half in (block.context, block.image):
                nn.init.zeros_(half.adaLN_modulation[-1].weight)
                nn.init.zeros_(half.adaLN_modulation[-1].bias)
        nn.init.normal_(self.null_text, std=NULL_INIT_STD)
        if self.null_pooled is not None:
            nn.init.normal_(self.null_pooled, std=NULL_INIT_STD)

    def _check_cond(self, cond: object) -> dict[str, Tensor]:
        if not isinstance(cond, dict) or "text" not in cond or "text_mask" not in cond:
            raise HasteError(
                "mmdit needs cond = {'text': B×L×D, 'text_mask': B×L bool[, 'pooled': B×P]}, "
                f"got {type(cond).__name__}"
            )
        if tuple(cond["text"].shape[1:]) != (self.text_len, self.text_dim):
            raise HasteError(
                f"caption embeddings have shape {tuple(cond['text'].shape[1:])} per sample; this mmdit was built "
                f"for {self.text_len}×{self.text_dim} (the data set's text_len × text_dim)"
            )
        if self.pooled_dim and "pooled" not in cond:
            raise HasteError(f"this mmdit was built with a pooled caption vector of {self.pooled_dim}; cond lacks it")
        return cond

    def _drop_captions(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """In training, replace each caption by the null caption with probability ``caption_dropout_prob``."""
        batch = cond["text"].shape[0]
        drop_B = torch.rand(batch, device=cond["text"].device) < self.config.caption_dropout_prob
        null = self.null_cond(cond)
        dropped = {}
        for key, value in null.items():
            dropped[key] = torch.where(drop_B.view(-1, *[1] * (value.dim() - 1)), value, cond[key])
        return dropped

    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor], capture: Capture | None = None) -> StudentOutput:
        capture = capture or Capture()
        cond = self._check_cond(cond)
        if self.training and self.config.caption_dropout_prob > 0:
            cond = self._drop_captions(cond)
        img_BND = self.x_embedder(x_t) + self.pos_embed
        txt_BLD = self.context_embedder(cond["text"].to(img_BND.dtype))
        c_BD = self.t_embedder(t)
        if self.y_embedder is not None:
            c_BD = c_BD + self.y_embedder(cond["pooled"].to(c_BD.dtype))
        image_keys = torch.ones(img_BND.shape[:2], dtype=torch.bool, device=x_t.device)
        text_keys = cond["text_mask"].bool()
        if self.config.attend_padding:
            text_keys = torch.ones_like(text_keys)
        keep_B11K = torch.cat([text_keys, image_keys], dim=1)[:, None, None, :]
        out = StudentOutput(pred=x_t)
        for index, block in enumerate(self.blocks):
            txt_BLD, img_BND, logits = block(txt_BLD, img_BND, c_BD, keep_B11K, capture_attn=index in capture.attn)
            record_block(out, capture, index, img_BND, logits)
        out.pred = unpatchify(self.final_layer(img_BND, c_BD), self.patch_size, self.channels)
        return out

    @classmethod
    def from_published(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return mmdit_from_published(tensors)

    @classmethod
    def to_published(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return mmdit_to_published(state)

    def null_cond(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """The learned null caption for every sample: all its ``text_len`` tokens count as real (mask True)."""
        batch, device = cond["text"].shape[0], cond["text"].device
        null = {
            "text": self.null_text.to(device).expand(batch, -1, -1),
            "text_mask": torch.ones(batch, self.text_len, dtype=torch.bool, device=device),
        }
        if self.null_pooled is not None:
            null["pooled"] = self.null_pooled.to(device).expand(batch, -1)
        elif "pooled" in cond:  # the data has it, this student ignores it (pooled: false): keep batches alike
            null["pooled"] = cond["pooled"]
        return null


# ours <-> the reference's models/mmdit.py (REPA, HASTE): per stream, the parts of a block's half
_BLOCK_PARTS = {"qkv.": "attn.qkv.", "proj.": "attn.proj.", "q_norm.": "attn.ln_q.", "k_norm.": "attn.ln_k.",
                "adaLN_modulation.": "adaLN_modulation.", "mlp.": "mlp."}  # fmt: skip
_STREAMS = {"context.": "context_block.", "image.": "x_block."}
ONLY_OURS = ("null_text", "null_pooled", "y_embedder.")  # learned null caption, pooled path: not in the reference


def _rename_block_key(key: str, to_published: bool) -> str:
    """``blocks.{i}.{context|image}.{part}`` <-> ``joint_blocks.{i}.{context_block|x_block}.{attn.part}``; other keys
    as they are (x_embedder, t_embedder, context_embedder, pos_embed, final_layer: the same names in both)."""
    source, target = ("blocks.", "joint_blocks.") if to_published else ("joint_blocks.", "blocks.")
    streams = _STREAMS if to_published else {theirs: ours for ours, theirs in _STREAMS.items()}
    parts = _BLOCK_PARTS if to_published else {theirs: ours for ours, theirs in _BLOCK_PARTS.items()}
    if not key.startswith(source):
        return key
    index, rest = key[len(source) :].split(".", 1)
    for stream, new_stream in streams.items():
        if rest.startswith(stream):
            part = rest[len(stream) :]
            for old, new in parts.items():
                if part.startswith(old):
                    return f"{target}{index}.{new_stream}{new}{part[len(old) :]}"
    layout = "reference" if to_published else "haste"
    raise CheckpointError(f"MMDiT key {key!r} has no counterpart in the {layout} layout")


def mmdit_from_published(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The reference MMDiT's student tensors named as ours (``null_text`` is not among them: the reference's null
    caption is the empty caption's embedding, which the importer supplies)."""
    return {_rename_block_key(key, to_published=False): value for key, value in tensors.items()}


def mmdit_to_published(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our MMDiT's ``state_dict`` in the reference layout; the learned null caption is left out (the reference
    feeds the empty caption's embedding instead). A student with the pooled path has no reference counterpart."""
    if any(key.startswith("y_embedder.") for key in state):
        raise CheckpointError(
            "this MMDiT adds a pooled caption vector to its conditioning, which the reference MMDiT does not have; "
            "only a student trained with pooled: false exports to the reference layout"
        )
    return {
        _rename_block_key(key, to_published=True): value
        for key, value in state.items()
        if not key.startswith(ONLY_OURS)
    }


@hookimpl
def haste_register_students(registry: Registry) -> None:
    for depth in DEPTHS:
        registry.add(f"mmdit_d{depth}", MMDiT, arch=MMDiTArch(depth=depth))
