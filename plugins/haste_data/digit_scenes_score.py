"""The convergence miniature's scorer, independent of the teacher: a small CNN digit classifier trained (seeded,
cached under ``$HASTE_CACHE/digit_scenes_score/``) on scenes of the *held-out* digits only, which neither the
teacher nor the student ever sees.

A set of generated scenes with their intended digits gets two numbers: the class accuracy (does the sample show
the digit it was asked for?) and the Fréchet distance (FD, lower is better) between the CNN's penultimate
features of the samples and of HELDOUT_SCENES held-out scenes. ``frechet_distance(trainer)`` is the score
``haste sweep-termination --score haste_data.digit_scenes_score:frechet_distance`` uses.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haste_core.eval.fid import frechet_distance_features
from haste_core.eval.samplers import euler_sample
from haste_core.weights.cache import cache_dir
from haste_data.digit_scenes import SIDE, make_scenes, scene_split
from haste_data.digits import load_split

log = logging.getLogger("haste")

FEATURE_DIM = 64
EPOCHS = 40  # each a fresh random scene of every held-out digit
BATCH = 64
LR = 2e-3
SEED = 4321  # not the teacher's: the scorer shares no weights, data or randomness with scenes_vit
CACHE_FORMAT = "digit_scenes_score/2"
SAMPLES = 300  # images per score: 30 of each digit
SAMPLE_STEPS = 16  # Euler steps, no guidance
NOISE_SEED = 7


class SceneCNN(nn.Module):
    """conv 32 → pool → conv 64 → pool → conv 64 → 64-d features → 10 logits, on 1×16×16 uint8 scenes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, 10)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(images.float() / 255)
        return features, self.head(features)


def train_scorer() -> tuple[dict[str, Tensor], float]:
    """Train on fresh scenes of the held-out digits; return the weights and the accuracy on training-digit scenes
    (digits the scorer never saw)."""
    digits, labels = load_split("heldout")
    check_digits, check_labels = load_split("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        generator = torch.Generator().manual_seed(SEED)
        model = SceneCNN()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
        for _ in range(EPOCHS):
            scenes = make_scenes(digits, generator)
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), BATCH):
                index = order[start : start + BATCH]
                loss = F.cross_entropy(model(scenes[index])[1], labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(make_scenes(check_digits, generator))[1]
    return model.state_dict(), (logits.argmax(1) == check_labels).float().mean().item()


class SceneScorer:
    """The trained CNN and the features of the held-out reference scenes."""

    def __init__(self) -> None:
        path = cache_dir() / "digit_scenes_score" / f"{CACHE_FORMAT.replace('/', '_v')}_seed{SEED}.pt"
        if not path.is_file():
            log.info("digit_scenes scorer: training a small CNN on scenes of the held-out digits (first use only)")
            state_dict, accuracy = train_scorer()
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save({"format": CACHE_FORMAT, "state_dict": state_dict, "accuracy": accuracy}, temporary)
            temporary.replace(path)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.model = SceneCNN()
        self.model.load_state_dict(saved["state_dict"])
        self.model.eval().requires_grad_(False)
        self.accuracy = float(saved["accuracy"])  # on scenes of the training digits, which it never saw
        reference, _ = scene_split("heldout", 0, 0)
        self.reference = self.features(reference)

    @torch.no_grad()
    def features(self, images: Tensor) -> np.ndarray:
        return self.model(images)[0].double().numpy()

    @torch.no_grad()
    def score(self, images: Tensor, labels: Tensor) -> tuple[float, float]:
        """(class accuracy, FD to the held-out reference) of uint8 N×1×16×16 scenes with their intended digits."""
        features, logits = self.model(images)
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return accuracy, frechet_distance_features(features.double().numpy(), self.reference)


@cache
def scorer() -> SceneScorer:
    return SceneScorer()


def sample_inputs(count: int = SAMPLES) -> tuple[Tensor, Tensor]:
    """The fixed noise and class-balanced digits every score draws from."""
    noise = torch.randn((count, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(NOISE_SEED))
    return noise, torch.arange(count) % 10


@torch.no_grad()
def draw(trainer: Any, noise: Tensor, labels: Tensor, steps: int = SAMPLE_STEPS) -> Tensor:
    """uint8 scenes from the trainer's EMA student (Euler ODE, no guidance)."""
    x = euler_sample(trainer.ema.model, trainer.objective, noise, labels, steps=steps, cfg_scale=1.0)
    return trainer.dataset.to_images(x)


def frechet_distance(trainer: Any) -> float:
    """The FD of SAMPLES scenes from a trainer's EMA student: the miniature's score for a termination sweep."""
    noise, labels = sample_inputs()
    return scorer().score(draw(trainer, noise, labels), labels)[1]
