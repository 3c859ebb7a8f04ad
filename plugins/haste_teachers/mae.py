"""MAE teachers (timm): ``mae_vitb16``, ``mae_vitl16``, ``mae_vith14`` — the encoders of He et al. 2022.

With a 16×16 student grid the /16 encoders read 256 px images unresized (REPA's MAE setting); the positional
embedding is resampled once from 14×14 to the student's grid. Weights: the timm hub files, a local file in
timm's layout or in the original MAE layout (``{"model": ...}``; decoder tensors, if present, are dropped), or
``none``. Block -1 is the encoder's final LayerNorm; REPA's MAE target was the last block before it
(``teacher_block: 23`` for ViT-L).
"""

from __future__ import annotations

from torch import Tensor

from haste_core import Registry, hookimpl
from haste_teachers.timm_teacher import TimmTeacher

# registered name -> timm model with its pretrained tag (timm 1.0 `vit_*_224.mae`)
MODELS = {
    "mae_vitb16": "vit_base_patch16_224.mae",
    "mae_vitl16": "vit_large_patch16_224.mae",
    "mae_vith14": "vit_huge_patch14_224.mae",
}
DECODER_KEYS = ("decoder", "mask_token")  # MAE's pixel decoder (visualisation checkpoints), not the encoder


class MAE(TimmTeacher):
    """A masked-autoencoder ViT encoder through timm."""

    family = "mae"

    def drop_unused(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in state.items() if not k.startswith(DECODER_KEYS)}


@hookimpl
def haste_register_teachers(registry: Registry) -> None:
    for name, model in MODELS.items():
        registry.add(name, MAE, registered_as=name, model=model)
