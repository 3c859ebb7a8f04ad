"""Building blocks shared by the DiT-family students: embeddings, adaLN-Zero blocks, capturable attention.

Module and parameter names follow the DiT/SiT/REPA code (``x_embedder.proj``, ``t_embedder.mlp.0``,
``y_embedder.embedding_table``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.adaLN_modulation.1``,
``final_layer.linear``...) so that published checkpoints map onto ours key for key.
Shapes: B batch, N tokens, D width, H heads, P patch size, C channels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haste_core import Capture, DataSpec, RecipeError, StudentOutput, StudentSpec, attention_logits

TIMESTEP_FREQUENCY_DIM = 256  # sinusoidal embedding width before the MLP (DiT, SiT)
MAX_PERIOD = 10_000  # base of the sinusoidal frequencies (Transformer, DiT)
LN_EPS = 1e-6  # LayerNorm eps of DiT/SiT blocks
QK_NORM_EPS = 1e-5  # REPA/HASTE --qk-norm: timm Attention's nn.LayerNorm with its default eps


def modulate(x_BND: Tensor, shift_BD: Tensor, scale_BD: Tensor) -> Tensor:
    return x_BND * (1 + scale_BD.unsqueeze(1)) + shift_BD.unsqueeze(1)


def timestep_frequencies(t_B: Tensor, dim: int = TIMESTEP_FREQUENCY_DIM) -> Tensor:
    """[cos(t·f_i), sin(t·f_i)] with f_i = exp(−ln(10000)·i/(dim/2)); t is used as given (SiT: in [0, 1])."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, device=t_B.device, dtype=torch.float32) / half)
    args = t_B.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal frequencies → Linear → SiLU → Linear."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIMESTEP_FREQUENCY_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t_B: Tensor) -> Tensor:
        return self.mlp(timestep_frequencies(t_B).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with one extra "null" row (index ``num_classes``) for classifier-free guidance.

    In training mode each label is replaced by the null class with probability ``dropout_prob``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels_B: Tensor) -> Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels_B.shape[0], device=labels_B.device) < self.dropout_prob
            labels_B = torch.where(drop, torch.full_like(labels_B, self.num_classes), labels_B)
        return self.embedding_table(labels_B)


class PatchEmbed(nn.Module):
    """Non-overlapping P×P patches → D channels (a strided convolution), flattened to B×N×D."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x_BCHW: Tensor) -> Tensor:
        return self.proj(x_BCHW).flatten(2).transpose(1, 2)


def sincos_pos_embed(hidden_size: int, grid: int) -> Tensor:
    """The fixed 2-D sin-cos table of MAE/DiT (grid²×D): first half encodes the column, second half the row.

    Each half is [sin(pos·ω), cos(pos·ω)] with ω_i = 10000^(−i/(D/4)). The column-first order reproduces the
    MAE meshgrid convention so that published checkpoints' tables match ours exactly.
    """
    if hidden_size % 4:
        raise ValueError(f"hidden size {hidden_size} must be divisible by 4 for the 2-D sin-cos table")
    quarter = hidden_size // 4
    omega = 1.0 / MAX_PERIOD ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def half(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([half(cols), half(rows)], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention: fused SDPA, or explicit softmax when the logits are captured.

    A captured block computes ``logits = (q·d^-½) kᵀ`` once, in fp32 even under autocast, applies their
    softmax, and returns them; no second attention computation happens.
    """

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x_BND: Tensor, capture: bool = False) -> tuple[Tensor, Tensor | None]:
        B, N, D = x_BND.shape
        q_BHND, k_BHND, v_BHND = self.qkv(x_BND).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q_BHND, k_BHND = self.q_norm(q_BHND), self.k_norm(k_BHND)
        logits_BHNN = None
        if capture:
            logits_BHNN = attention_logits(q_BHND, k_BHND, self.scale)
            out_BHND = logits_BHNN.softmax(dim=-1).to(v_BHND.dtype) @ v_BHND
        else:
            out_BHND = F.scaled_dot_product_attention(q_BHND, k_BHND, v_BHND)
        return self.proj(out_BHND.transpose(1, 2).reshape(B, N, D)), logits_BHNN


class Mlp(nn.Module):
    """Linear D→rD, GELU (tanh approximation), Linear rD→D."""

    def __init__(self, hidden_size: int, mlp_ratio: float) -> None:
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, inner)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(inner, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AdaLNBlock(nn.Module):
    """DiT block with adaLN-Zero: x += gate₁·Attn(mod₁(LN x)); x += gate₂·MLP(mod₂(LN x)), modulation from c."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(hidden_size, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x_BND: Tensor, c_BD: Tensor, capture_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c_BD).chunk(6, dim=-1)
        attn_out, logits = self.attn(modulate(self.norm1(x_BND), shift1, scale1), capture=capture_attn)
        x_BND = x_BND + gate1.unsqueeze(1) * attn_out
        x_BND = x_BND + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x_BND), shift2, scale2))
        return x_BND, logits


class FinalLayer(nn.Module):
    """LN → modulate (shift, scale from c) → Linear D → P²·C_out."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x_BND: Tensor, c_BD: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c_BD).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x_BND), shift, scale))


def patch_student_spec(name: str, arch: Any, data: DataSpec) -> StudentSpec:
    """The spec of a student with ``arch``'s depth, width, heads and patch size on ``data``'s latents, which must be
    square with a side the patch size divides."""
    _, height, width = data.x_shape
    if height != width or height % arch.patch_size:
        raise RecipeError(
            f"needs square inputs whose side divides by the patch size {arch.patch_size}; "
            f"the data gives {height}×{width}"
        )
    return StudentSpec(
        name=name,
        depth=arch.depth,
        hidden_size=arch.hidden_size,
        num_heads=arch.num_heads,
        grid=height // arch.patch_size,
    )


def record_block(out: StudentOutput, capture: Capture, index: int, tokens_BND: Tensor, logits: Tensor | None) -> None:
    """Keep block ``index``'s attention logits (computed only when captured) and, if asked, its output tokens."""
    if logits is not None:
        out.attn_logits[index] = logits
    if index in capture.hidden:
        out.hidden[index] = tokens_BND


def unpatchify(x_BNK: Tensor, patch_size: int, channels: int) -> Tensor:
    """B×N×(P·P·C) tokens (channel-last inside each token) → B×C×H×W images."""
    B, N, _ = x_BNK.shape
    side = math.isqrt(N)
    x = x_BNK.reshape(B, side, side, patch_size, patch_size, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, channels, side * patch_size, side * patch_size)


def init_dit_weights(model: nn.Module) -> None:
    """DiT/SiT initialisation: Xavier Linears with zero bias, N(0, 0.02) embeddings,
    Xavier patch conv on its [D, P·P·C] view, and zeros for every adaLN output and the final projection, so
    that every block starts as the identity and the network's output is 0."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, PatchEmbed):
            nn.init.xavier_uniform_(module.proj.weight.view(module.proj.weight.shape[0], -1))
            nn.init.zeros_(module.proj.bias)
        elif isinstance(module, LabelEmbedder):
            nn.init.normal_(module.embedding_table.weight, std=0.02)
        elif isinstance(module, TimestepEmbedder):
            nn.init.normal_(module.mlp[0].weight, std=0.02)
            nn.init.normal_(module.mlp[2].weight, std=0.02)
        elif isinstance(module, (AdaLNBlock, FinalLayer)):
            nn.init.zeros_(module.adaLN_modulation[-1].weight)
            nn.init.zeros_(module.adaLN_modulation[-1].bias)
        if isinstance(module, FinalLayer):
            nn.init.zeros_(module.linear.weight)
            nn.init.zeros_(module.linear.bias)
