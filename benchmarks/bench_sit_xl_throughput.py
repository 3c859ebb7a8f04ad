"""SiT-XL/2 training throughput (images/s, bf16) with and without HASTE alignment, side by side in one process.

    python benchmarks/bench_sit_xl_throughput.py [--rounds 5] [--steps 10] [--batch 32]      (or: make bench)

Two trainers on one GPU, built from recipes written here: ``vanilla`` (SiT-XL/2, flow objective, no teacher) and
``haste`` held in Phase I (DINOv2-B/14 teacher, REPA projection of block 7 and attention distillation of blocks
4..7 from teacher blocks 8..11, first 12 heads: the paper's setting). Data are random
4×32×32 latents with random 256-px images (``--batch`` per step, drawn once), so only the model work is timed;
the teacher has random weights (``weights: none``), which costs exactly what the real ones cost. The trainers take
turns, ``--steps`` optimiser steps each per round. Reported: median images/s of each and haste / vanilla.

Without a GPU it says so and exits 0 (``make bench`` runs it everywhere); ``--cpu --student sit_b_2 --batch 1``
runs the same comparison on the CPU as a smoke test.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.train.trainer import Trainer

DATA = Path(__file__).resolve().parent / "synthetic_latents.py"  # random 4×32×32 latents: 256 tokens for SiT-XL/2
IMAGE_SHAPE = [3, 256, 256]  # what DINOv2 reads (resized to 224 px, a 16×16 grid)
# HASTE on SiT-XL/2: REPA on block 7, attention pairs (4..7 ← 8..11), λ = 0.5 each
HASTE = {
    "teacher": {"name": "dinov2_vitb14", "weights": "none"},
    "alignment": [
        {"name": "repa", "weight": 0.5, "student_block": 7, "teacher_block": -1},
        {"name": "attention", "weight": 0.5, "pairs": [[4, 8], [5, 9], [6, 10], [7, 11]], "heads": "first"},
    ],
    "termination": {"name": "never"},
}


def build(out: Path, name: str, student: str, batch: int, device: torch.device, aligned: bool) -> Trainer:
    raw = {
        "run": {"name": name, "output_dir": str(out), "max_steps": 1_000_000, "log_every": 1_000_000,
                "checkpoint_every": 0, "device": device.type},
        "data": {"name": "synthetic_latents", "global_batch_size": batch, "num_items": 2 * batch,
                 "image_shape": IMAGE_SHAPE},
        "student": {"name": student},
        "objective": {"name": "flow"},
        "optimizer": {"lr": 1.0e-4},
        "precision": {"dtype": "bf16" if device.type == "cuda" else "fp32", "tf32": True},
        "plugins": [str(DATA)],
        **(HASTE if aligned else {}),
    }  # fmt: skip
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe, plugins = load_recipe(path)
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    return Trainer(recipe, plugins, env)


def seconds_per_step(trainer: Trainer, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps per trainer per round")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--student", default="sit_xl_2")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test; use a small --student)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("no GPU visible: SiT-XL/2 training throughput skipped (--cpu runs a smoke test on the CPU)")
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    logging.basicConfig(level=logging.WARNING, format="[haste] %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            "vanilla": build(Path(tmp), "vanilla", args.student, args.batch, device, aligned=False),
            "haste (Phase I)": build(Path(tmp), "haste", args.student, args.batch, device, aligned=True),
        }
        for trainer in trainers.values():
            seconds_per_step(trainer, 2, device)  # warm-up: kernels, allocator, optimiser state
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                times[name].append(seconds_per_step(trainer, args.steps, device))
            print(".", end="", flush=True)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    precision = "bf16" if device.type == "cuda" else "fp32"
    print(f"\n{args.student} training, batch {args.batch}, {precision}, {where}, {args.rounds}×{args.steps} steps:")
    rates = {name: args.batch / statistics.median(values) for name, values in times.items()}
    for name, rate in rates.items():
        print(f"  {name:<18} {rate:9.1f} images/s   ({statistics.median(times[name]) * 1e3:.1f} ms/step)")
    print(f"  haste / vanilla = {rates['haste (Phase I)'] / rates['vanilla']:.3f} (throughput ratio)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
