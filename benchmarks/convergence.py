"""Miniature convergence benchmark: vanilla vs REPA vs HASTE on the embedded digits, scored as training goes.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/convergence.py [--every 100] [--samples 500]
    (or: make bench-convergence)

The three digits recipes (digits_vanilla.yaml, digits_repa.yaml, quickstart.yaml = HASTE) train with the same
budget, seed and data order, one process each. Every ``--every`` steps the EMA student draws ``--samples``
images (class-balanced labels, Euler ODE, the same noise every time, no guidance unless ``--cfg``) and they are
scored by a small CNN digit classifier that is independent of the teacher (trained here, seeded, on the same
training split the students see; its held-out accuracy is printed): class accuracy of the samples (does the
sample show the digit it was asked for?) and the Fréchet distance between the classifier's penultimate features
of the samples and of the held-out real digits (FD, lower is better).

Writes ``<out>/convergence.csv`` (method, step, accuracy, fd) and ``<out>/convergence.png``, and prints the
steps each method needs to reach a fixed quality (by default the FD and accuracy vanilla has at the end of its
budget) with the ratios to vanilla.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from haste_data.digits import load_split
from torch import Tensor, nn

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.eval.fid import frechet_distance_features
from haste_core.eval.samplers import euler_sample
from haste_core.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
METHODS = {"vanilla": "digits_vanilla.yaml", "REPA": "digits_repa.yaml", "HASTE": "quickstart.yaml"}
QUIET = ["run.log_every=1000000", "run.checkpoint_every=0", "run.sample_every=0", "run.resume=never"]
# The scoring classifier: a small CNN, trained with random 1-pixel shifts (seeded, ~10 s on one CPU thread).
CLASSIFIER_EPOCHS = 30
CLASSIFIER_BATCH = 64
CLASSIFIER_LR = 2e-3
CLASSIFIER_SEED = 1234  # not the teacher's seed: the scorer shares nothing with digits_vit
FEATURE_DIM = 64
SAMPLE_NOISE_SEED = 7
FD_LEVELS = (40.0, 20.0, 15.0, 10.0)  # fixed quality levels of the summary (real-vs-real FD is about 5.5)
ACCURACY_LEVELS = (0.5, 0.8, 0.9)


class DigitCNN(nn.Module):
    """conv 16 → conv 32 → pool → 64-d features → 10 logits, on 1×8×8 images in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, FEATURE_DIM), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, 10)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(images.float() / 255)
        return features, self.head(features)


def random_shift(images: Tensor, generator: torch.Generator) -> Tensor:
    """Shift each image by up to one pixel in each direction (zero padding)."""
    padded = F.pad(images, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


def train_classifier(images: Tensor, labels: Tensor) -> DigitCNN:
    torch.manual_seed(CLASSIFIER_SEED)
    generator = torch.Generator().manual_seed(CLASSIFIER_SEED)
    model = DigitCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=CLASSIFIER_LR, weight_decay=1e-4)
    for _ in range(CLASSIFIER_EPOCHS):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), CLASSIFIER_BATCH):
            index = order[start : start + CLASSIFIER_BATCH]
            _, logits = model(random_shift(images[index], generator))
            loss = F.cross_entropy(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def score(classifier: DigitCNN, images: Tensor, labels: Tensor, reference: np.ndarray) -> tuple[float, float]:
    """(class accuracy, Fréchet distance to the reference features) of uint8 images with their intended labels."""
    features, logits = classifier(images)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return accuracy, frechet_distance_features(features.double().numpy(), reference)


def build(recipe: str, out: Path, steps: int) -> Trainer:
    loaded, plugins = load_recipe(
        REPO / "recipes" / recipe, [f"run.output_dir={out}", f"run.max_steps={steps}", *QUIET]
    )
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    return Trainer(loaded, plugins, env)


@torch.no_grad()
def draw(trainer: Trainer, noise: Tensor, labels: Tensor, steps: int, cfg: float) -> Tensor:
    x = euler_sample(trainer.ema.model, trainer.objective, noise, labels, steps=steps, cfg_scale=cfg)
    return trainer.dataset.to_images(x)


def steps_to_reach(rows: list[dict], method: str, key: str, target: float, lower_is_better: bool) -> int | None:
    for row in rows:
        if row["method"] == method and (row[key] <= target if lower_is_better else row[key] >= target):
            return row["step"]
    return None


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS:
        mine = [row for row in rows if row["method"] == method]
        steps = [row["step"] for row in mine]
        axes[0].plot(steps, [row["fd"] for row in mine], marker="o", markersize=3, label=method)
        axes[1].plot(steps, [100 * row["accuracy"] for row in mine], marker="o", markersize=3, label=method)
    axes[0].set(xlabel="training step", ylabel="Fréchet distance (classifier features), lower is better")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="training step", ylabel="class accuracy of samples (%)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training budget per method (the recipes' 2000)")
    parser.add_argument("--every", type=int, default=100, help="score the EMA student every this many steps")
    parser.add_argument("--samples", type=int, default=500, help="samples per evaluation (class-balanced)")
    parser.add_argument("--sampling-steps", type=int, default=50, help="Euler steps per sample")
    parser.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1: none, as in the papers' tables)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "convergence")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--from-csv", type=Path, default=None, help="only re-plot and summarise a CSV this wrote")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[haste] %(message)s")
    if args.from_csv:
        return resummarise(args.from_csv)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"unknown method(s) {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2

    train_images, train_labels = load_split("train")
    heldout_images, heldout_labels = load_split("heldout")
    started = time.perf_counter()
    classifier = train_classifier(train_images, train_labels)
    with torch.no_grad():
        reference, logits = classifier(heldout_images)
    heldout_accuracy = (logits.argmax(1) == heldout_labels).float().mean().item()
    reference = reference.double().numpy()
    floor_accuracy, floor_fd = score(classifier, train_images, train_labels, reference)
    print(
        f"scoring classifier (small CNN, seed {CLASSIFIER_SEED}): held-out accuracy {100 * heldout_accuracy:.1f}% "
        f"({len(heldout_labels)} digits), trained in {time.perf_counter() - started:.0f} s; "
        f"real training digits vs held-out: FD {floor_fd:.2f}, accuracy {100 * floor_accuracy:.1f}%",
        flush=True,
    )

    labels = torch.arange(args.samples) % 10  # class-balanced
    noise = torch.randn((args.samples, 1, 8, 8), generator=torch.Generator().manual_seed(SAMPLE_NOISE_SEED))
    rows: list[dict] = []
    for method in methods:
        trainer = build(METHODS[method], args.out / "runs", args.steps)
        began = time.perf_counter()
        while trainer.step < args.steps:
            for _ in range(args.every):
                trainer.train_step()
            accuracy, fd = score(
                classifier, draw(trainer, noise, labels, args.sampling_steps, args.cfg), labels, reference
            )
            rows.append({"method": method, "step": trainer.step, "accuracy": accuracy, "fd": fd})
            print(
                f"  {method:<8} step {trainer.step:5d}  accuracy {100 * accuracy:5.1f}%  FD {fd:8.3f}  "
                f"({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
        del trainer

    csv_path, png_path = args.out / "convergence.csv", args.out / "convergence.png"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "step", "accuracy", "fd"])
        writer.writeheader()
        writer.writerows(rows)
    title = (
        f"digits, sit_micro_2, batch 128, seed 0; {args.samples} EMA samples every {args.every} steps "
        f"(Euler {args.sampling_steps}, cfg {args.cfg}); scorer held-out acc {100 * heldout_accuracy:.1f}%"
    )
    plot(rows, png_path, title)
    summarise(rows, methods)
    print(f"wrote {csv_path} and {png_path}")
    return 0


def resummarise(path: Path) -> int:
    with path.open() as handle:
        rows = [{"method": r["method"], "step": int(r["step"]), "accuracy": float(r["accuracy"]), "fd": float(r["fd"])}
                for r in csv.DictReader(handle)]  # fmt: skip
    methods = list(dict.fromkeys(row["method"] for row in rows))
    if not path.with_suffix(".png").is_file():  # the run's own plot (with its settings in the title) is kept
        plot(rows, path.with_suffix(".png"), f"digits convergence ({path.name})")
        print(f"wrote {path.with_suffix('.png')}")
    summarise(rows, methods)
    return 0


def summarise(rows: list[dict], methods: list[str]) -> None:
    """Final and best values, then the steps each method needs to reach fixed FD and accuracy levels (the
    levels below, and what the baseline has at the end of its budget) and the ratio baseline / method."""
    base = "vanilla" if "vanilla" in methods else methods[0]
    final = {m: [r for r in rows if r["method"] == m][-1] for m in methods}
    best = {m: min(r["fd"] for r in rows if r["method"] == m) for m in methods}
    print("\n" + "   ".join(f"{m}: final FD {final[m]['fd']:.2f} (best {best[m]:.2f}), "
                            f"final accuracy {100 * final[m]['accuracy']:.1f}%" for m in methods))  # fmt: skip
    targets = [("fd", level, True) for level in FD_LEVELS] + [("fd", final[base]["fd"], True)]
    targets += [("accuracy", level, False) for level in ACCURACY_LEVELS] + [
        ("accuracy", final[base]["accuracy"], False)
    ]
    print(f"\nsteps to reach a fixed quality (ratio = {base} steps / method steps; '-': not reached in the budget)")
    print(f"  {'quality':<22}" + "".join(f"{m:>18}" for m in methods))
    for key, level, lower in targets:
        label = f"FD <= {level:.2f}" if lower else f"accuracy >= {100 * level:.1f}%"
        base_steps = steps_to_reach(rows, base, key, level, lower)
        cells = []
        for method in methods:
            needed = steps_to_reach(rows, method, key, level, lower)
            ratio = f" ({base_steps / needed:.2f}x)" if needed and base_steps else ""
            cells.append(f"{needed if needed is not None else '-'}{ratio}")
        print(f"  {label:<22}" + "".join(f"{cell:>18}" for cell in cells))


if __name__ == "__main__":
    sys.exit(main())
