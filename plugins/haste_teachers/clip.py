"""CLIP teachers (open_clip): ``clip_vitb16`` and ``clip_vitl14``, the image towers of CLIP ViT-B/16 and ViT-L/14.

The pretrained tag is a setting (``pretrained: openai`` by default: OpenAI's weights, QuickGELU; any open_clip
tag of the architecture works, e.g. ``laion2b_s34b_b88k``). The model comes from open_clip's public
``create_model`` (no weights, nothing downloaded); only its image tower is kept. Its blocks use
``torch.nn.MultiheadAttention`` with a packed input projection; a forward pre-hook on that module reads its input
and applies the module's own ``in_proj_weight``/``in_proj_bias`` to get the queries and keys it attends with,
while the module itself runs unchanged (fused). Block -1 is ``ln_post`` on the patch tokens; REPA's CLIP target
was the last block before it (``teacher_block: 23`` for ViT-L/14).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from haste_core import HasteError, RecipeError, Registry, hookimpl
from haste_core.weights.hub import HubFile
from haste_teachers.vit_teacher import Dims, Sink, ViTTeacher

# registered name -> open_clip architecture
ARCHS = {"clip_vitb16": "ViT-B-16", "clip_vitl14": "ViT-L-14"}
DEFAULT_TAG = "openai"
OPEN_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip/constants.py
TOWER_PREFIX = "visual."  # a full CLIP state dict keeps the image tower under this prefix
CLASS_TOKENS = 1  # open_clip's VisionTransformer has one class token and no registers
TESTED_OPEN_CLIP = "3.3.0"  # the open_clip_torch release this module was written and tested against
TOWER_API = ("transformer", "ln_post", "positional_embedding", "patch_size", "forward_intermediates")
RANDOM_INIT_NOTICE = "No pretrained weights loaded"  # create_model's root-logger warning for pretrained=None


class CLIP(ViTTeacher):
    """The image tower of an open_clip CLIP ViT."""

    family = "clip"

    @dataclass(kw_only=True, frozen=True)
    class Config(ViTTeacher.Config):
        pretrained: str = DEFAULT_TAG  # open_clip pretrained tag (weights: hub); also sets QuickGELU and norms

    @classmethod
    def describe(cls, config: Config, **kwargs: Any) -> Any:
        _pretrained_cfg(kwargs["arch"], config.pretrained)  # an unknown tag fails at validation
        return super().describe(config, **kwargs)

    @classmethod
    def build_backbone(cls, config: Config, image_size: int, *, arch: str, **fixed: Any) -> nn.Module:
        """open_clip's public ``create_model`` without weights (no download); its text tower is dropped."""
        import open_clip

        quick_gelu = bool(_pretrained_cfg(arch, config.pretrained).get("quick_gelu", False))
        with _quiet_random_init_notice():
            model = open_clip.create_model(
                arch,
                pretrained=None,
                force_quick_gelu=quick_gelu,
                force_image_size=image_size,
                device=torch.get_default_device(),  # the meta device when describe() reads the dimensions
            )
        tower = getattr(model, "visual", None)
        missing = [name for name in TOWER_API if not hasattr(tower, name)]
        if missing or not hasattr(getattr(tower, "transformer", None), "resblocks"):
            raise HasteError(
                f"open_clip {open_clip.__version__} builds {arch} without the image tower API the CLIP teacher "
                f"uses ({', '.join(missing) or 'transformer.resblocks'} missing; written for open_clip "
                f"{TESTED_OPEN_CLIP}): install open_clip_torch=={TESTED_OPEN_CLIP} or use a DINOv2/MAE teacher"
            )
        return tower

    @classmethod
    def dims(cls, backbone: nn.Module) -> Dims:
        return Dims(
            depth=len(backbone.transformer.resblocks),
            embed_dim=backbone.transformer.width,
            num_heads=backbone.transformer.resblocks[0].attn.num_heads,
            patch_size=backbone.patch_size[0],
            prefix_tokens=CLASS_TOKENS,
        )

    @classmethod
    def hub_file(cls, config: Config, *, arch: str, **fixed: Any) -> HubFile | None:
        hub = _pretrained_cfg(arch, config.pretrained).get("hf_hub", "")
        if not hub:
            return None
        repo_id, filename = hub.rstrip("/"), ""
        if not hub.endswith("/"):
            repo_id, _, filename = hub.rpartition("/")
        return HubFile(repo_id, (filename,) if filename else OPEN_CLIP_HUB_FILES)

    @classmethod
    def norm_constants(cls, config: Config, *, arch: str, **fixed: Any) -> tuple[Sequence[float], Sequence[float]]:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        cfg = _pretrained_cfg(arch, config.pretrained)
        return cfg.get("mean", OPENAI_DATASET_MEAN), cfg.get("std", OPENAI_DATASET_STD)

    def blocks(self) -> Sequence[nn.Module]:
        return self.backbone.transformer.resblocks

    def final_norm(self) -> nn.Module:
        return self.backbone.ln_post

    def intermediates(self, pixels: Tensor, indices: list[int]) -> list[Tensor]:
        out = self.backbone.forward_intermediates(
            pixels, indices=indices, stop_early=True, output_fmt="NLC", intermediates_only=True
        )
        return out["image_intermediates"]

    def hook_attention(self, index: int, sink: Sink) -> list[Any]:
        attn: nn.MultiheadAttention = self.backbone.transformer.resblocks[index].attn

        def on_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["query"]
            x_BND = x if module.batch_first else x.transpose(0, 1)
            q_BHND, k_BHND = (_heads(t, module.num_heads) for t in _project_qk(module, x_BND))
            sink(index, q_BHND, k_BHND, module.head_dim**-0.5)

        return [attn.register_forward_pre_hook(on_input, with_kwargs=True)]

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        from timm.layers import resample_abs_pos_embed

        if any(k.startswith(TOWER_PREFIX) for k in state):
            state = {k[len(TOWER_PREFIX) :]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
        pos = state.get("positional_embedding")
        want = self.backbone.positional_embedding
        if pos is not None and pos.ndim == 2 and pos.shape != want.shape:
            resampled = resample_abs_pos_embed(
                pos[None].float(), new_size=(self.grid, self.grid), num_prefix_tokens=CLASS_TOKENS
            )  # bicubic with antialiasing, as timm resamples DINOv2 and MAE
            state = {**state, "positional_embedding": resampled[0].to(pos.dtype)}
        return state


def _project_qk(attn: nn.MultiheadAttention, x_BND: Tensor) -> tuple[Tensor, Tensor]:
    """The queries and keys ``attn`` computes from ``x`` (its packed input projection, rows q | k | v)."""
    D = attn.embed_dim
    bias = attn.in_proj_bias
    q = nn.functional.linear(x_BND, attn.in_proj_weight[:D], None if bias is None else bias[:D])
    k = nn.functional.linear(x_BND, attn.in_proj_weight[D : 2 * D], None if bias is None else bias[D : 2 * D])
    return q, k


def _heads(x_BND: Tensor, heads: int) -> Tensor:
    B, N, D = x_BND.shape
    return x_BND.reshape(B, N, heads, D // heads).transpose(1, 2)


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(RANDOM_INIT_NOTICE)


@contextmanager
def _quiet_random_init_notice() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning: the weights are loaded (or not) and logged by us after."""
    notice = _DropRandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


def _pretrained_cfg(arch: str, tag: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch))
        raise RecipeError(f"open_clip has no pretrained tag {tag!r} for {arch}; choose one of: {tags}", "pretrained")
    return cfg


@hookimpl
def haste_register_teachers(registry: Registry) -> None:
    for name, arch in ARCHS.items():
        registry.add(name, CLIP, registered_as=name, arch=arch)
