"""The convergence miniature's teacher: the ``digits_vit`` network on 16×16 digit scenes (a 4×4 grid of 4×4
patches), trained by haste as a digit classifier on fresh random scenes of every training digit each epoch.

It knows more than the generative student's data: the student sees a few hundred fixed scenes
(``digit_scenes``), this teacher has seen every training digit at tens of thousands of scales, angles, shears
and places. Trained once (a few minutes on 2 CPU cores, seeded) and cached under ``$HASTE_CACHE/scenes_vit/``;
it never sees the held-out digits the samples are scored against. Same ``Teacher`` interface as ``digits_vit``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from haste_core import Registry, hookimpl
from haste_teachers.digits_vit import (
    LABEL_SMOOTHING,
    DigitsViT,
    DigitsViTNet,
    cached_or_trained,
    heldout_accuracy,
    normalise,
    trained_cache_path,
)

log = logging.getLogger("haste")

SCENE_SIDE = 16
SCENE_PATCH = 4  # a 4×4 grid of 4×4 patches: the token count of digits_vit, so a CPU step stays cheap
TRAIN_EPOCHS = 16  # each a fresh random scene of every training digit: 22,992 scenes in all
TRAIN_BATCH = 64
TRAIN_LR = 2e-3
TRAIN_WEIGHT_DECAY = 0.05
TRAIN_SEED = 0
CACHE_FORMAT = "scenes_vit/2"  # bump when the architecture, the scenes or the training recipe change


class ScenesViT(DigitsViT):
    """``digits_vit``'s 4-block, 4-head, 64-wide ViT on 16×16 scenes (16 patch tokens)."""

    name = "scenes_vit"
    image_side = SCENE_SIDE
    patch_size = SCENE_PATCH

    def cached_weights(self, config: DigitsViT.Config) -> Path:
        return cached_weights(config.heldout_fraction, config.split_seed)


def cached_weights(heldout_fraction: float = 0.2, split_seed: int = 0) -> Path:
    """The cached weights; trained and written (atomically) if missing."""
    path = trained_cache_path(CACHE_FORMAT, heldout_fraction, split_seed, TRAIN_SEED)
    return cached_or_trained(path, CACHE_FORMAT, lambda: train_scenes_vit(heldout_fraction, split_seed))


def train_scenes_vit(heldout_fraction: float = 0.2, split_seed: int = 0) -> tuple[dict[str, Tensor], float]:
    """Train the classifier on fresh scenes of the training digits every epoch; return weights and the accuracy on
    scenes of the held-out digits."""
    from haste_data.digit_scenes import make_scenes
    from haste_data.digits import load_split

    digits, labels = load_split("train", heldout_fraction, split_seed)
    held_digits, held_labels = load_split("heldout", heldout_fraction, split_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or threads)
    started = time.perf_counter()
    log.info(f"teacher scenes_vit: training on {TRAIN_EPOCHS} x {len(labels)} fresh scenes (first use only)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SEED)
        generator = torch.Generator().manual_seed(TRAIN_SEED)
        held_scenes = make_scenes(held_digits, torch.Generator().manual_seed(TRAIN_SEED + 1))
        net = DigitsViTNet(SCENE_SIDE, SCENE_PATCH)
        optimizer = torch.optim.AdamW(net.parameters(), lr=TRAIN_LR, weight_decay=TRAIN_WEIGHT_DECAY)
        steps_per_epoch = math.ceil(len(labels) / TRAIN_BATCH)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=TRAIN_LR, total_steps=TRAIN_EPOCHS * steps_per_epoch, pct_start=0.1
        )
        for epoch in range(TRAIN_EPOCHS):
            net.train()
            scenes = make_scenes(digits, generator)  # a new scale, angle, shear and place for every digit
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(labels), TRAIN_BATCH):
                index = order[start : start + TRAIN_BATCH]
                logits = net.classify(normalise(scenes[index]))
                loss = F.cross_entropy(logits, labels[index], label_smoothing=LABEL_SMOOTHING)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            if (epoch + 1) % 10 == 0 or epoch + 1 == TRAIN_EPOCHS:
                accuracy = heldout_accuracy(net, held_scenes, held_labels)
                log.info(
                    f"teacher scenes_vit: epoch {epoch + 1}/{TRAIN_EPOCHS}, loss {loss.item():.3f}, held-out scene "
                    f"accuracy {accuracy:.1%} ({time.perf_counter() - started:.0f} s)"
                )
    torch.set_num_threads(threads)
    return net.state_dict(), accuracy


@hookimpl
def haste_register_teachers(registry: Registry) -> None:
    registry.add("scenes_vit", ScenesViT)
