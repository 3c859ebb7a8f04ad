"""DINOv2 teachers (timm): ``dinov2_vit{s,b,l,g}14`` and the register variants ``dinov2_vit{s,b,l,g}14_reg``.

HASTE and REPA align SiT with DINOv2-B/14 (``dinov2_vitb14``): 12 blocks, width 768, 12 heads, patch 14, so
256 px images are resized to 224 px for a 16×16 grid (512 px → 448 px, 32×32). Weights: the timm hub files
(``weights: hub``), a local file in timm's layout or in the original facebookresearch torch.hub layout, or
``none``. Register tokens are dropped from tokens and attention maps exactly like the class token.
"""

from __future__ import annotations

from haste_core import Registry, hookimpl
from haste_teachers.timm_teacher import TimmTeacher

# registered name -> timm model with its pretrained tag (timm 1.0 `vit_*_patch14[_reg4]_dinov2.lvd142m`)
MODELS = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2.lvd142m",
}


class DINOv2(TimmTeacher):
    """A DINOv2 ViT/14 (Oquab et al. 2023) through timm; block -1 is the final LayerNorm's patch tokens."""

    family = "dinov2"


@hookimpl
def haste_register_teachers(registry: Registry) -> None:
    for name, model in MODELS.items():
        registry.add(name, DINOv2, registered_as=name, model=model)
