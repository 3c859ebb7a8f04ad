"""Attention-distillation loss, chunked (haste_core.attention_loss) against naive autograd: peak memory and time.

    python benchmarks/bench_attention_loss.py [--batch 2] [--heads 12] [--repeats 3]      (or: make bench)

For 256 tokens (256 px, SiT-*/2) and 1,024 tokens (512 px), forward + backward of one pair's loss on B×H×N×N
fp32 logits. Peak memory is what the loss adds on top of its inputs and their gradient: on CUDA from
``torch.cuda.max_memory_allocated``; on CPU each measurement runs in a fresh process and reads the growth of
its peak resident set. Time is the median of ``--repeats`` runs. Both methods are measured in the same run and
printed side by side with their ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from haste_core.attention_loss import attention_loss, attention_loss_naive

TOKENS = (256, 1024)  # 16×16 and 32×32 patch grids: 256 px and 512 px with a /2 student on SD-VAE latents
METHODS = {"naive": attention_loss_naive, "chunked": attention_loss}
BYTES_PER_MB = 2**20
KB_PER_MB = 1024  # Linux reports ru_maxrss in kilobytes


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / BYTES_PER_MB


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
        base = _rss_mb()
        once()
        peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KB_PER_MB - base)
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
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.batch, args.heads, args.repeats, device)
        print(json.dumps(result))
        return 0
    results = {}
    for tokens in TOKENS:
        for method in METHODS:
            if device.type == "cuda":
                results[method, tokens] = measure(method, tokens, args.batch, args.heads, args.repeats, device)
            else:  # a fresh process per measurement, so that its peak resident set is the loss's own
                command = [sys.executable, __file__, "--one", method, str(tokens), f"--batch={args.batch}",
                           f"--heads={args.heads}", f"--repeats={args.repeats}"]  # fmt: skip
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                results[method, tokens] = json.loads(output.strip().splitlines()[-1])
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
