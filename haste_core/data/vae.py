"""The SD-VAE (diffusers ``AutoencoderKL``): encode images to posterior moments, decode latents to images.

``diffusers`` is the optional extra ``haste-diffusion[vae]`` and is imported only when a VAE is loaded. Weights come
from a local folder (one that ``AutoencoderKL.save_pretrained`` wrote) or from the Hugging Face hub cache; with
``HF_HUB_OFFLINE=1`` a VAE that is not in the cache fails at once, saying how to fetch it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from haste_core.errors import HasteError
from haste_core.weights.cache import hub_offline

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"  # REPA/HASTE training VAE
SD_VAE_SCALE = 0.18215  # SD-VAE latent scale


def load_vae(name_or_path: str = DEFAULT_VAE, device: torch.device | str = "cpu") -> Any:
    """An eval-mode ``AutoencoderKL`` without gradients, from a local folder or the hub (cache first)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise HasteError(
            "the VAE needs the optional package 'diffusers': pip install 'haste-diffusion[vae]' "
            "(or pip install diffusers accelerate)"
        ) from None
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise HasteError(f"{local} holds no VAE: expected config.json and weights written by save_pretrained")
        vae = AutoencoderKL.from_pretrained(local)
    else:
        try:
            vae = AutoencoderKL.from_pretrained(name_or_path, local_files_only=True)
        except OSError:
            if hub_offline():
                raise HasteError(
                    f"VAE {name_or_path!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                    f"downloading it. On a machine with network run `huggingface-cli download {name_or_path}` "
                    "(or copy its folder here and give its path instead of the name)"
                ) from None
            vae = AutoencoderKL.from_pretrained(name_or_path)
    return vae.to(device).eval().requires_grad_(False)


def check_vae_reachable(name_or_path: str) -> None:
    """Fail now, not after hours of training, if ``load_vae(name_or_path)`` could not work (nothing is loaded)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise HasteError(
            "decoding latents needs the optional package 'diffusers': pip install 'haste-diffusion[vae]' "
            "(or set data.preview=channels)"
        ) from None
    local = Path(name_or_path).expanduser()
    if local.is_dir() or not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        raise HasteError(
            f"VAE {name_or_path!r} (for sample grids) is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
            f"downloading it: run `huggingface-cli download {name_or_path}` where there is network, give a local "
            "folder as data.vae, or set data.preview=channels"
        )


@torch.no_grad()
def encode_moments(vae: Any, images: Tensor) -> Tensor:
    """Posterior moments B×2C×h×w (mean ‖ std, unscaled) of uint8 images B×3×H×W."""
    pixels = images.to(vae.device, vae.dtype) / 127.5 - 1
    posterior = vae.encode(pixels).latent_dist
    return torch.cat([posterior.mean, posterior.std], dim=1).float()


@torch.no_grad()
def decode_latents(vae: Any, latents: Tensor, *, scale: float = SD_VAE_SCALE, shift: float = 0.0) -> Tensor:
    """uint8 images B×3×H×W of scaled latents (z·scale + shift, what a student produces)."""
    z = (latents.to(vae.device, vae.dtype) - shift) / scale
    pixels = vae.decode(z).sample
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
