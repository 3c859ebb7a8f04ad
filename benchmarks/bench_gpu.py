"""SiT-XL/2 on one GPU: images/s, MFU and peak memory of vanilla, HASTE Phase I and Phase II, eager and compiled.

    python benchmarks/bench_gpu.py [--steps 20] [--budget-s 450]                      (or: make bench-gpu)

256-px latents (4×32×32, 256 tokens), bf16 autocast, TF32, AdamW, the DINOv2-B teacher (random weights: the cost
is the same) with HASTE's SiT-XL/2 alignment (REPA after block 7, attention pairs (4,8) (5,9) (6,10) (7,11)).
The per-GPU batch is the largest of 128/64/32 at which a Phase I step fits. Each configuration warms up (compiling,
for the compiled ones) and then times ``--steps`` steps; MFU uses the trainer's FLOP model and the GPU's peak
(``haste_core.train.flops``). One table; targets: vanilla ≥ 40 % MFU, Phase I ≥ 0.85× and Phase II ≥ 0.97×
vanilla's images/s, Phase II's peak memory within 2 % of vanilla's. Configurations left when ``--budget-s`` is
spent are reported as skipped, so the script ends within 8 minutes. Needs CUDA: it refuses to run without.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from haste_core import distributed
from haste_core.config.recipe import load_recipe
from haste_core.train.flops import mfu
from haste_core.train.trainer import Trainer

BATCHES = (128, 64, 32)
TARGETS = "vanilla >= 40 % MFU; Phase I >= 0.85x and Phase II >= 0.97x vanilla img/s; Phase II memory <= 1.02x"
BASE = {
    "data": {"name": "synthetic_latents", "image_shape": [3, 256, 256], "num_items": 1024},
    "student": {"name": "sit_xl_2"},
    "objective": {"name": "flow"},
    "optimizer": {"lr": 1.0e-4},
    "precision": {"dtype": "bf16", "tf32": True},
    "plugins": [str(Path(__file__).resolve().parent / "synthetic_latents.py")],
}
HASTE = {
    "teacher": {"name": "dinov2_vitb14", "weights": "none"},
    "alignment": [
        {"name": "repa", "weight": 0.5, "student_block": 7, "teacher_block": -1, "projector_dim": 2048},
        {"name": "attention", "weight": 0.5, "pairs": [[4, 8], [5, 9], [6, 10], [7, 11]], "heads": "first"},
    ],
}
PHASES = {"vanilla": None, "Phase I": 1_000_000, "Phase II": 1}  # termination step (None: no alignment)


def build(out: Path, phase: str, batch: int, compiled: bool) -> Trainer:
    name = f"{phase.replace(' ', '_')}_{batch}_{'compiled' if compiled else 'eager'}"
    raw: dict[str, Any] = {
        **BASE,
        "run": {"name": name, "output_dir": str(out), "max_steps": 10**9, "log_every": 10**9, "checkpoint_every": 0},
        "data": {**BASE["data"], "global_batch_size": batch},
        "compile": {"student": compiled},
    }
    if PHASES[phase] is not None:
        raw.update(HASTE, termination={"name": "fixed_step", "step": PHASES[phase]})
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe, plugins = load_recipe(path)
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cuda"))
    return Trainer(recipe, plugins, env)


def release(trainer: Trainer | None) -> None:
    del trainer
    gc.collect()
    torch.cuda.empty_cache()


def largest_batch(out: Path) -> int:
    for batch in BATCHES:
        trainer = None
        try:
            trainer = build(out, "Phase I", batch, compiled=False)
            for _ in range(2):
                trainer.train_step()
            torch.cuda.synchronize()
            return batch
        except torch.cuda.OutOfMemoryError:
            pass
        finally:
            release(trainer)
    raise SystemExit(f"not even batch {BATCHES[-1]} of SiT-XL/2 Phase I fits on this GPU")


def measure(trainer: Trainer, batch: int, warmup: int, steps: int, peak: float | None) -> dict[str, float]:
    for _ in range(warmup):
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    torch.cuda.synchronize()
    images_per_s = batch * steps / (time.perf_counter() - started)
    flops = trainer.throughput.flops.total
    return {
        "img/s": images_per_s,
        "mfu": mfu(flops, images_per_s, peak) if peak else float("nan"),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
        "gflop": flops / 1e9,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting configurations after this")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "bench_gpu.py needs a CUDA GPU and none is visible; nothing was run. The CPU figures come from "
            "`make bench` (benchmarks/bench_phase_cost.py); see docs/performance.md.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="[haste] %(message)s")
    started = time.perf_counter()
    rows: list[tuple[str, dict[str, float] | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        batch = largest_batch(out)
        for compiled in (False, True):
            for phase in PHASES:
                label = f"{phase:<8} {'compiled' if compiled else 'eager'}"
                if time.perf_counter() - started > args.budget_s:
                    rows.append((label, None))
                    continue
                trainer = build(out, phase, batch, compiled)
                warmup = args.warmup + (1 if phase == "Phase II" else 0)  # its first step is the aligned one
                rows.append((label, measure(trainer, batch, warmup, args.steps, trainer.throughput.peak)))
                release(trainer)
    name = torch.cuda.get_device_name()
    print(f"\nSiT-XL/2, 256 px latents, bf16, batch {batch} per GPU, on {name} ({time.perf_counter() - started:.0f} s)")
    print(f"  {'configuration':<18} {'img/s':>8} {'MFU':>7} {'GFLOP/img':>10} {'peak GB':>8} {'vs vanilla':>11}")
    reference = {kind: dict(rows)[f"vanilla  {kind}"] for kind in ("eager", "compiled")}
    for label, row in rows:
        if row is None:
            print(f"  {label:<18} skipped (time budget)")
            continue
        base = reference[label.split()[-1]]
        versus = f"{row['img/s'] / base['img/s']:.3f}x" if base else "-"
        print(
            f"  {label:<18} {row['img/s']:8.1f} {row['mfu']:7.1%} {row['gflop']:10.1f} {row['peak_gb']:8.2f} "
            f"{versus:>11}"
        )
    print(f"  targets: {TARGETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
