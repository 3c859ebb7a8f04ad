"""Student step time with and without capture of the paper's blocks, side by side in one process.

    python benchmarks/bench_student_capture.py [--rounds 9] [--batch 1]      (or: make bench)

A SiT-B/2-shaped student (12 blocks, width 768, 12 heads) on 4×32×32 latents (256 tokens) runs forward and
backward (a step without the optimiser) in two ways, alternating so that machine noise hits both alike:
plain (fused attention everywhere) and capturing what HASTE aligns (attention logits of blocks 4..7 and the
hidden tokens of block 7, all entering the loss). Reported: median ms/step and the capture / plain ratio, the
price of Phase I on the student side (no teacher, no projector).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from haste_core.interfaces import Capture, DataSpec
from haste_core.plugins import load_plugins
from haste_core.testing import build_student

STUDENT = "sit_b_2"
LATENTS = DataSpec(x_shape=(4, 32, 32), image_shape=(3, 256, 256), num_classes=1000, num_items=1)  # 256 px
PAPER_CAPTURE = Capture(hidden=frozenset({7}), attn=frozenset({4, 5, 6, 7}))  # HASTE: pairs (4..7, 8..11), REPA 7


def step(student: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, capture: Capture | None) -> float:
    started = time.perf_counter()
    out = student(x, t, y, capture=capture)
    loss = out.pred.float().square().mean()
    for tensor in [*out.hidden.values(), *out.attn_logits.values()]:
        loss = loss + 1e-3 * tensor.float().square().mean()
    loss.backward()
    student.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    entry = load_plugins().registry("students").get(STUDENT)
    student = build_student(entry, entry.cls.Config(), LATENTS).train()
    x, t = torch.randn(args.batch, *LATENTS.x_shape), torch.rand(args.batch)
    y = torch.randint(0, LATENTS.num_classes, (args.batch,))
    ways = {"plain (fused attention)": None, "capture attn 4..7 + hidden 7": PAPER_CAPTURE}
    for capture in ways.values():
        step(student, x, t, y, capture)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, capture in ways.items():
            times[name].append(step(student, x, t, y, capture))
        print(".", end="", flush=True)
    threads = torch.get_num_threads()
    print(f"\n{STUDENT} forward+backward, 256 tokens, batch {args.batch}, {threads} CPU threads, {args.rounds} rounds:")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"  {name:<32} {median * 1e3:8.1f} ms/step   (rounds: {min(times[name]) * 1e3:.1f}-"
              f"{max(times[name]) * 1e3:.1f})")  # fmt: skip
    plain, captured = medians.values()
    print(f"  capture / plain = {captured / plain:.3f}")
    if torch.cuda.is_available():
        print("  (a GPU is visible; this benchmark measures the CPU path only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
