"""`elastic`'s noise field: the host time per step it cost when drawn on the host (before), and
its draw on the batch's device (now), side by side in one run.

Before, every elastic step on a GPU drew a (B, 2, S, S) float32 field with torch's CPU
generator and copied it to the GPU from pageable memory (82 MB at 400 px x 64). Now the field
is drawn on the batch's device. On a GPU `--device cuda` times both; on a CPU the "device"
draw is the same host work as before, so there only the before row means anything: it is the
host time each elastic step no longer spends once the model is on a GPU.

    .venv/bin/python bench/elastic_noise.py [--device cpu|cuda] [--batch 64] [--sizes 256 400]
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import describe, load_average


def host_ms(draw, rounds: int) -> float:
    """Median host milliseconds per call (no device sync: what the training loop waits)."""
    draw()  # warm-up: allocator, kernels
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        draw()
        times.append(1000 * (time.perf_counter() - started))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 400])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    start_load = load_average()
    rows = []
    for size in args.sizes:
        shape = (args.batch, 2, size, size)

        def before(shape=shape):  # the old elastic: a host draw, then a pageable copy
            return (torch.rand(shape) * 2 - 1).to(device, non_blocking=True)

        def now(shape=shape):  # the field drawn where the batch is
            return torch.rand(shape, device=device) * 2 - 1

        rows.append((size, host_ms(before, args.rounds), host_ms(now, args.rounds)))
    print(describe(start_load, device=str(device)))
    print("| size | field (MB) | host ms per step, before | host ms per step, now |\n"
          "|---|---|---|---|")
    for size, old, new in rows:
        megabytes = args.batch * 2 * size * size * 4 / 1e6
        print(f"| {size} px x {args.batch} | {megabytes:.0f} | {old:.1f} | {new:.1f} |")


if __name__ == "__main__":
    main()
