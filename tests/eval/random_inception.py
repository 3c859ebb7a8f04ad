"""A random-weight FID Inception file in pytorch-fid's layout (torchvision key names), for tests without network.

Convolutions get He-scaled normal weights and the batch norms random affine parameters and running statistics, so
activations neither vanish nor explode through the 94 layers and every part of the network matters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """Write random Inception-v3 (1008 classes, no auxiliary head) weights to ``path``; returns ``path``."""
    from torchvision.models import inception_v3

    generator = torch.Generator().manual_seed(seed)
    state = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        if value.dim() == 4:  # convolution
            value.copy_(torch.randn(value.shape, generator=generator) * (2 / value[0].numel()) ** 0.5)
        elif key.endswith("running_var") or (key.endswith("bn.weight")):
            value.copy_(0.5 + torch.rand(value.shape, generator=generator))
        elif key.endswith(("running_mean", "bn.bias")):
            value.copy_(0.2 * torch.rand(value.shape, generator=generator) - 0.1)
        else:  # the classifier
            value.copy_(0.05 * torch.randn(value.shape, generator=generator))
    torch.save(state, path)
    return path


def sha256_prefix(path: Path, length: int = 8) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:length]
