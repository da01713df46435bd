"""Batch ops, kornia vs hand-written, and each preset's per-image CPU form: images/s per core.

    .venv/bin/python bench/augment_ops.py                       # 224 px, batch 32, 1 thread
    .venv/bin/python bench/augment_ops.py --small               # seconds (the test runs this)

For every preset of augment.py's registry: its per-image CPU form (the torchvision v2
transform, one uint8 image at a time, as a loader worker runs it) and its batch op (the device
form, on a float batch in 0..1) on the CPU device, one torch thread, so both figures are per
core. Where the batch op is hand-written (gpu_augment.py: color-jitter, sharpness,
autocontrast), kornia's class with the same meaning is timed beside it. Each batch op is also
timed on a batch of 32 images of 24 px, where the arithmetic is little: its host time per call
(Python, parameter draws, kernel launches), which on a GPU is most of what a batch op costs
the training step's thread. Variants run in interleaved rounds (a load swing on a shared
machine hits them alike); the median of the rounds is printed. A GPU figure needs a GPU box:
`--device cuda`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import kornia.augmentation as K
import torch
from machine import describe, load_average

from carsweep.trainable.augment import AUGMENTATIONS

CPU = "cpu per image"
KORNIA = "kornia's class"
# The presets whose batch op is hand-written (gpu_augment.py says why): kornia's class with
# the preset's meaning, timed beside it.
KORNIA_CLASSES = {
    "color-jitter": K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=1.0),
    "sharpness": K.RandomSharpness(sharpness=(2.0, 2.0), p=0.5),
    "autocontrast": K.RandomAutoContrast(p=0.5),
}
TINY = 24  # px: little arithmetic, and above elastic's reflect padding (20 px) on both forms


def variants(size: int) -> dict[str, dict[str, object]]:
    """{preset: {variant: callable on a batch}} for every per-image preset."""
    table = {}
    for name, preset in AUGMENTATIONS.items():
        if preset.per_batch or name == "none":  # per batch: no per-image form to compare
            continue
        cpu = preset.build(size)
        ops = {CPU: lambda batch, t=cpu: torch.stack([t(image) for image in batch]),
               "batch op": preset.device(size)}
        if name in KORNIA_CLASSES:
            ops[KORNIA] = KORNIA_CLASSES[name]
        table[name] = ops
    return table


def rate(op, batch: torch.Tensor, seconds: float, sync) -> float:
    """images/s of `op` on `batch`, repeated for at least `seconds` (one warm-up call first)."""
    op(batch)
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        op(batch)
        done += len(batch)
    sync()
    return done / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start_load = load_average()
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    floats = images.to(device).float() / 255
    tiny = torch.rand(32, 3, TINY, TINY, device=device)
    rows = []
    for name, ops in variants(args.size).items():
        tiny_ops = variants(TINY)[name]
        rates: dict[str, list[float]] = {variant: [] for variant in ops}
        overheads: dict[str, list[float]] = {variant: [] for variant in ops if variant != CPU}
        for _ in range(args.rounds):
            for variant, op in ops.items():
                batch = images if variant == CPU else floats
                rates[variant].append(rate(op, batch, args.seconds, sync))
                if variant != CPU:
                    calls = rate(tiny_ops[variant], tiny, args.seconds / 4, sync) / len(tiny)
                    overheads[variant].append(1000.0 / calls)
        rows.append({"preset": name, **{variant: round(statistics.median(values), 1)
                                        for variant, values in rates.items()},
                     **{f"{variant}, host ms per call": round(statistics.median(values), 3)
                        for variant, values in overheads.items()}})
    return {"machine": describe(start_load, device=str(device)), "size": args.size,
            "batch": args.batch, "threads": args.threads, "rounds": args.rounds, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: per core)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per variant per round")
    parser.add_argument("--device", default="cpu", help="where the batch ops run")
    parser.add_argument("--small", action="store_true", help="seconds: 32 px, batch 8, 1 round")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.small:
        args.size, args.batch, args.rounds, args.seconds = 32, 8, 1, 0.05
    result = run(args)
    print(result["machine"])
    print(f"augmentation at {result['size']} px, batch {result['batch']}, "
          f"{result['threads']} torch thread(s), median of {result['rounds']} rounds, images/s")
    print("| preset | cpu per image | batch op | kornia's class | batch op / cpu "
          "| host ms per call: batch op | kornia's class |")
    print("|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        hand = row.get(KORNIA)
        hand_ms = row.get(f"{KORNIA}, host ms per call")
        print(f"| {row['preset']} | {row[CPU]:,.0f} | {row['batch op']:,.0f} "
              f"| {'' if hand is None else f'{hand:,.0f}'} "
              f"| {row['batch op'] / row[CPU]:.2f}x | {row['batch op, host ms per call']:.2f} "
              f"| {'' if hand_ms is None else f'{hand_ms:.2f}'} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
