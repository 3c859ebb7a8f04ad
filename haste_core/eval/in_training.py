"""In-training FID-k (the recipe's ``eval`` section): every ``eval.every`` steps, ``eval.num_samples`` images from
the EMA student against a reference batch, logged as ``eval/fid`` through the normal metrics path.

Every process draws its share of the images (class-balanced labels, the ``sampling`` section's sampler, the same
noise every time) and computes their Inception pool features; rank 0 gathers them and computes the Fréchet distance
against the reference statistics (those stored in the reference file, ``mu``/``sigma``, when it has them, as the
ADM suite; else those of its images, computed once at start), with the same Inception network and input path as
``haste evaluate`` (``haste_core.eval.inception``); the value is broadcast so all ranks log the same number.
FID-k with k = a few thousand is biased upwards against FID-50K: compare runs with the same k, not with papers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from haste_core import distributed
from haste_core.config.sections import EvalConfig, SamplingConfig
from haste_core.distributed import DistEnv
from haste_core.eval.fid import frechet_distance, gaussian_stats
from haste_core.eval.generate import generate, image_labels
from haste_core.eval.inception import load_fid_inception
from haste_core.eval.scores import read_reference, reference_statistics

log = logging.getLogger("haste")


class FIDEvaluator:
    """Holds the Inception network and the reference statistics; ``evaluate`` returns {"eval/fid": value}."""

    def __init__(self, config: EvalConfig, sampling: SamplingConfig, env: DistEnv) -> None:
        self.config, self.sampling, self.env = config, sampling, env
        self.network = load_fid_inception(config.inception or None, env.device)
        self.reference = None
        if env.is_main:
            reference = read_reference(config.reference)
            outputs = None
            if "pool" not in reference.stored:  # as the ADM suite: stored statistics when the file has them
                outputs = {"pool": self._pool(torch.from_numpy(reference.images).permute(0, 3, 1, 2))}
            self.reference, source = reference_statistics(reference.stored, outputs, "pool")
            against = "its stored mu/sigma" if source == "stored" else f"its {len(reference.images)} images"
            log.info(f"eval: FID-{config.num_samples} every {config.every} steps against {config.reference} "
                     f"({against})")  # fmt: skip

    def due(self, step: int, last: bool) -> bool:
        return last or step % self.config.every == 0

    def _pool(self, images: torch.Tensor) -> np.ndarray:
        """Inception pool features in float32 even inside the trainer's autocast, so that the samples' features are
        computed exactly as the reference's were."""
        parts = []
        for start in range(0, len(images), self.config.batch):
            chunk = images[start : start + self.config.batch].to(self.env.device)
            if chunk.shape[1] == 1:  # grey images: the same channel three times, as RGB viewers show them
                chunk = chunk.expand(-1, 3, -1, -1)
            with torch.autocast(self.env.device.type, enabled=False):
                parts.append(self.network(chunk)["pool"].double().cpu().numpy())
        return np.concatenate(parts)

    @torch.no_grad()
    def evaluate(self, student: Any, objective: Any, dataset: Any) -> dict[str, float]:
        count = self.config.num_samples
        labels = image_labels(count, dataset.spec.num_classes, "balanced", 0) if dataset.spec.num_classes else None
        mine = list(range(self.env.rank, count, self.env.world_size))
        images = [
            generate(
                student, objective, dataset, mine[i : i + self.config.batch], labels, self.sampling, self.env.device
            )
            for i in range(0, len(mine), self.config.batch)
        ]
        features = self._pool(torch.cat(images)) if images else None
        gathered = distributed.all_gather_objects(features)
        value = None
        if self.env.is_main:
            samples = np.concatenate([part for part in gathered if part is not None])
            value = frechet_distance(*gaussian_stats(samples), *self.reference)
        return {"eval/fid": float(distributed.broadcast_object(value))}
