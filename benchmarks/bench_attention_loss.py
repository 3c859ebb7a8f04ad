"""Attention-distillation loss, chunked (haste_alignment.attention_loss) against naive autograd: peak memory and time.

    python benchmarks/bench_attention_loss.py [--batch 2] [--heads 12] [--repeats 3]      (or: make bench)

For 256 tokens (256 px, SiT-*/2) and 1,024 tokens (512 px), forward + backward of one pair's loss on B×H×N×N
fp32 logits. Peak memory is what the loss adds on top of its inputs and their gradient: on CUDA from
``torch.cuda.max_memory_allocated``; on CPU from the allocations and frees that ``torch.profiler`` records
(``profile_memory``), summed in time order (the resident set would also count the C allocator's caching). Time
is the median of ``--repeats`` runs, outside the profiler. Both methods are measured in the same run and printed
side by side with their ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from haste_alignment.attention_loss import attention_loss, attention_loss_naive
from torch.profiler import ProfilerActivity, profile

TOKENS = (256, 1024)  # 16×16 and 32×32 patch grids: 256 px and 512 px with a /2 student on SD-VAE latents
METHODS = {"naive": attention_loss_naive, "chunked": attention_loss}
BYTES_PER_MB = 2**20


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's native library writes start/stop lines straight to file descriptor 2; keep them out of the
    bench's output (Python exceptions still surface after it is restored)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_mb(action: Callable[[], None]) -> float:
    """The highest sum of live bytes that ``action`` allocates on the CPU, from the profiler's memory events."""
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        action()
    changes = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak / BYTES_PER_MB


def measure(method: str, tokens: int, batch: int, heads: int, repeats: int, device: torch.device) -> dict:
    """Peak extra memory (MB) and median time (ms) of forward + backward, in this process."""
    loss_fn = METHODS[method]
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (batch, heads, tokens, tokens)
    student = torch.randn(shape, generator=generator, device=device).requires_grad_(True)
    teacher = torch.randn(shape, generator=generator, device=device)
    student.grad = torch.zeros_like(student)  # the gradient buffer exists in training too: not the loss's cost

    def once() -> None:
        loss_fn(student, teacher).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        once()  # warm-up (kernels, allocator)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        once()
        peak = (torch.cuda.max_memory_allocated(device) - base) / BYTES_PER_MB
    else:
        once()  # warm-up
        peak = _cpu_peak_mb(once)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return {"peak_mb": peak, "ms": statistics.median(times) * 1e3, "input_mb": student.numel() * 4 / BYTES_PER_MB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=12, help="teacher heads (DINOv2-B: 12)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for tokens in TOKENS:
        for method in METHODS:
            results[method, tokens] = measure(method, tokens, args.batch, args.heads, args.repeats, device)
            print(".", end="", flush=True)
    where = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\nattention loss, forward + backward, B={args.batch}, H={args.heads}, fp32, on {where}:")
    print(f"  {'tokens':>6} {'logits MB':>9} | {'naive MB':>9} {'chunked MB':>10} {'ratio':>6} | "
          f"{'naive ms':>9} {'chunked ms':>10} {'ratio':>6}")  # fmt: skip
    for tokens in TOKENS:
        naive, chunked = results["naive", tokens], results["chunked", tokens]
        memory_ratio = chunked["peak_mb"] / naive["peak_mb"] if naive["peak_mb"] else float("nan")
        print(
            f"  {tokens:>6} {naive['input_mb']:>9.1f} | {naive['peak_mb']:>9.1f} {chunked['peak_mb']:>10.1f} "
            f"{memory_ratio:>6.2f} | {naive['ms']:>9.1f} {chunked['ms']:>10.1f} {chunked['ms'] / naive['ms']:>6.2f}"
        )
    print("  (MB: peak memory the loss adds beyond its input logits and their gradient; ratio: chunked / naive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
