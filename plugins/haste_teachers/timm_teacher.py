"""Teachers built from timm ``VisionTransformer`` models (DINOv2, MAE): the timm side of ``ViTTeacher``.

The model is timm's own, unmodified. Attention logits come from forward hooks on each attention module's
``q_norm`` and ``k_norm`` submodules (identities unless the model normalises q and k): their outputs are exactly
the queries and keys timm then hands to ``scaled_dot_product_attention``, scaled by ``attn.scale``.
Weights files are converted with timm's own ``checkpoint_filter_fn``, which also reads the original
facebookresearch DINOv2 layout (``mask_token``, ``register_tokens``, SwiGLU ``w12``/``w3``) and resamples the
positional embedding once, bicubic with antialiasing, to this teacher's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from haste_core import HasteError
from haste_core.weights.hub import HubFile
from haste_teachers.vit_teacher import Dims, Sink, ViTTeacher

TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm itself tries, in order (timm/models/_hub.py)
TESTED_TIMM = "1.0.31"  # the timm release this module was written and tested against
ATTENTION_API = ("q_norm", "k_norm", "scale")  # timm Attention: q, k = q_norm(q), k_norm(k); SDPA at `scale`
UNUSED_PREFIXES = ("head.",)  # classifier heads: a teacher returns tokens, never logits over classes


class TimmTeacher(ViTTeacher):
    """A timm ViT teacher; registered with ``model`` (a timm name with its pretrained tag) and ``registered_as``."""

    @classmethod
    def build_backbone(cls, config: Any, image_size: int, *, model: str, **fixed: Any) -> nn.Module:
        import timm

        return timm.create_model(model, pretrained=False, num_classes=0, img_size=image_size)

    @classmethod
    def dims(cls, backbone: nn.Module) -> Dims:
        return Dims(
            depth=len(backbone.blocks),
            embed_dim=backbone.embed_dim,
            num_heads=backbone.blocks[0].attn.num_heads,
            patch_size=backbone.patch_embed.patch_size[0],
            prefix_tokens=backbone.num_prefix_tokens,
        )

    @classmethod
    def hub_file(cls, config: Any, *, model: str, **fixed: Any) -> HubFile | None:
        import timm

        hub_id = timm.models.get_pretrained_cfg(model).hf_hub_id
        return HubFile(hub_id, TIMM_HUB_FILES) if hub_id else None

    @classmethod
    def norm_constants(cls, config: Any, *, model: str, **fixed: Any) -> tuple[Sequence[float], Sequence[float]]:
        import timm

        cfg = timm.models.get_pretrained_cfg(model)
        return cfg.mean, cfg.std

    def blocks(self) -> Sequence[nn.Module]:
        return self.backbone.blocks

    def final_norm(self) -> nn.Module:
        return self.backbone.norm

    def intermediates(self, pixels: Tensor, indices: list[int]) -> list[Tensor]:
        return self.backbone.forward_intermediates(
            pixels, indices=indices, stop_early=True, output_fmt="NLC", intermediates_only=True
        )

    def hook_attention(self, index: int, sink: Sink) -> list[Any]:
        attn = self.backbone.blocks[index].attn
        missing = [name for name in ATTENTION_API if not hasattr(attn, name)]
        if missing:
            import timm

            raise HasteError(
                f"timm {timm.__version__}'s {type(attn).__name__} has no {', '.join(missing)}, which the attention "
                f"capture of {self.name} hooks (written for timm {TESTED_TIMM}): install timm=={TESTED_TIMM}"
            )
        queries: list[Tensor] = []

        def on_q(module: nn.Module, inputs: Any, q_BHND: Tensor) -> None:
            queries.append(q_BHND)

        def on_k(module: nn.Module, inputs: Any, k_BHND: Tensor) -> None:
            sink(index, queries.pop(), k_BHND, attn.scale)

        return [attn.q_norm.register_forward_hook(on_q), attn.k_norm.register_forward_hook(on_k)]

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = self.drop_unused(state)
        converted = checkpoint_filter_fn(state, self.backbone)
        return {k: v for k, v in converted.items() if not k.startswith(UNUSED_PREFIXES)}

    def drop_unused(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Tensors of a weights file that are not part of the encoder (a family may drop more)."""
        return state
