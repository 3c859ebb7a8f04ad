"""Evaluation presets (``haste sample --preset NAME``): the sampling protocols behind published numbers, pinned.

Each preset fixes sampler, steps, CFG scale, guidance interval, label sampling and seed as the REPA/HASTE reference
``generate.py`` runs them for the papers' tables (``scripts/test.sh``, the READMEs), and the number of images the
protocol scores; ``sampling.json`` records the preset's name beside the values. The seed is the reference's default
(0); our per-image noise (``haste_core.eval.generate``) is not the reference's per-rank stream, so samples are the
same *distribution*, not the same images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from haste_core.errors import HasteError


@dataclass(frozen=True)
class SamplingPreset:
    """One published sampling protocol."""

    description: str
    sampler: str
    steps: int
    cfg_scale: float
    guidance_low: float
    guidance_high: float
    labels: str  # uniform: seeded uniform class draws, as generate.py (text data: the data set's captions)
    seed: int
    num_images: int

    def as_record(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SamplingPreset] = {
    "haste_sit_xl2_in256": SamplingPreset(
        "HASTE SiT-XL/2 ImageNet 256 (best FID; HASTE README and scripts/test.sh)",
        "sde", 250, 1.65, 0.0, 0.72, "uniform", 0, 50_000,
    ),
    "repa_sit_xl2_in256": SamplingPreset(
        "REPA SiT-XL/2 ImageNet 256 (FID 1.42; REPA README)", "sde", 250, 1.8, 0.0, 0.7, "uniform", 0, 50_000
    ),
    "no_guidance_in256": SamplingPreset(
        "REPA/HASTE tables without guidance, ImageNet 256 (any model size)",
        "sde", 250, 1.0, 0.0, 1.0, "uniform", 0, 50_000,
    ),
    "haste_mmdit_coco256": SamplingPreset(
        "HASTE MMDiT MS-COCO 256 text-to-image (HASTE README: 40,192 samples from the validation captions)",
        "sde", 250, 2.25, 0.0, 1.0, "uniform", 0, 40_192,
    ),
}  # fmt: skip


def get_preset(name: str) -> SamplingPreset:
    if name not in PRESETS:
        raise HasteError(f"unknown sampling preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
