"""Teacher encode time: everything the reference computes vs only what HASTE needs, DINOv2-S and -B at 224 px.

    python benchmarks/bench_teacher_encode.py [--rounds 3] [--batch-s 2] [--batch-b 1]      (or: make bench)

Four ways of encoding the same uint8 256 px batch (resized to 224 px, a 16×16 grid), side by side, taking turns
in every round so that machine noise hits all alike (random weights, ``weights: none``: only cost matters):

* ``reference``  all 12 blocks with explicit (non-fused) attention and all 12 attention maps returned: what the
  HASTE reference's patched DINOv2 computes every step;
* ``all maps``   all 12 blocks fused, all 12 maps captured by hooks;
* ``haste``      what the paper recipe asks: final tokens (block -1) and the maps of blocks 8-11;
* ``repa``       final tokens only.

Reported: median ms per batch and the ratio to ``reference``. On CUDA it runs in bf16 autocast with batch
``--batch-gpu`` and also prints images/s for DINOv2-B (``haste``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from haste_core.interfaces import DataSpec, StudentSpec
from haste_core.plugins import load_plugins
from haste_core.testing import build_teacher

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMAGE_SIDE = 256  # ImageNet 256 px images, resized by the teacher to 224 px
GRID = 16  # SiT-*/2 at 256 px: 16×16 tokens
HASTE_MAPS = frozenset({8, 9, 10, 11})  # recipes/haste_sit_xl2_dinov2b_in256.yaml: pairs (4,8)..(7,11)
FINAL = frozenset({-1})


def build(name: str):
    entry = load_plugins().registry("teachers").get(name)
    data = DataSpec(x_shape=(4, 32, 32), image_shape=(3, IMAGE_SIDE, IMAGE_SIDE), num_classes=1000, num_items=1)
    student = StudentSpec(name="sit_xl_2", depth=28, hidden_size=1152, num_heads=16, grid=GRID)
    return build_teacher(entry, entry.cls.Config(weights="none"), data, student).to(DEVICE)


def set_fused(teacher, fused: bool) -> None:
    for block in teacher.blocks():
        block.attn.fused_attn = fused


def variants(teacher) -> dict[str, Callable[[torch.Tensor], object]]:
    every = frozenset(range(teacher.depth))

    def reference(images: torch.Tensor) -> object:
        set_fused(teacher, False)
        try:
            return teacher.encode(images, FINAL, every)
        finally:
            set_fused(teacher, True)

    return {
        "reference": reference,
        "all maps": lambda images: teacher.encode(images, FINAL, every),
        "haste": lambda images: teacher.encode(images, FINAL, HASTE_MAPS),
        "repa": lambda images: teacher.encode(images, FINAL, frozenset()),
    }


def timed(fn: Callable[[torch.Tensor], object], images: torch.Tensor) -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
        fn(images)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def bench(name: str, batch: int, rounds: int) -> dict[str, float]:
    teacher = build(name)
    images = torch.randint(0, 256, (batch, 3, IMAGE_SIDE, IMAGE_SIDE), dtype=torch.uint8, device=DEVICE)
    ways = variants(teacher)
    for fn in ways.values():  # warm-up (allocator, kernels)
        timed(fn, images)
    times: dict[str, list[float]] = {key: [] for key in ways}
    for _ in range(rounds):
        for key, fn in ways.items():
            times[key].append(timed(fn, images))
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"{name} (batch {batch}, 224 px, {DEVICE.type}{', bf16' if DEVICE.type == 'cuda' else ', fp32'}):")
    for key, seconds in medians.items():
        ratio = seconds / medians["reference"]
        print(f"  {key:<10} {seconds * 1e3:9.1f} ms/batch   x{ratio:.2f} of reference")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-s", type=int, default=2, help="DINOv2-S batch on the CPU")
    parser.add_argument("--batch-b", type=int, default=1, help="DINOv2-B batch on the CPU")
    parser.add_argument("--batch-gpu", type=int, default=256, help="batch for both on CUDA")
    args = parser.parse_args()
    on_gpu = DEVICE.type == "cuda"
    bench("dinov2_vits14", args.batch_gpu if on_gpu else args.batch_s, args.rounds)
    base = bench("dinov2_vitb14", args.batch_gpu if on_gpu else args.batch_b, args.rounds)
    if on_gpu:
        print(f"DINOv2-B encode throughput (haste: tokens + maps 8-11, bf16): {args.batch_gpu / base['haste']:.0f} "
              "images/s")  # fmt: skip
    else:
        print("(no CUDA device: the GPU throughput figure of DINOv2-B is printed when one is available)")


if __name__ == "__main__":
    main()
