"""What cam-occlusion costs: training images/s of the epoch loop with and without it.

The same ResNet-18 epoch (`trainable.loop.train_one_epoch`, forward + backward + SGD per batch)
runs on the same in-memory batches, side by side in one process, without the batch hook and
with `CamOcclusion` at a few settings; rounds are interleaved so a load change on a shared
machine hits every variant alike. Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/cam_occlusion.py [--resize 64] [--batch-size 32] [--batches 6]
                                            [--rounds 3] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe, load_average
from torch import nn

from carsweep.config.trial import TrialConfig
from carsweep.trainable import build_model, normalization, resolve_device
from carsweep.trainable.cam_occlusion import CamOcclusion
from carsweep.trainable.data import Loader
from carsweep.trainable.gpu_augment import Normalize
from carsweep.trainable.loop import train_one_epoch
from carsweep.trainable.optim import build_optimizer, build_scheduler

CLASSES = 8
VARIANTS = {  # name -> batch hook settings (None: plain training)
    "without (augmentation flip)": None,
    "cam-occlusion p=0.5 q=0.1 erase": {"p": 0.5, "q": 0.1, "kind": "erase"},
    "cam-occlusion p=0.5 q=0.1 blur": {"p": 0.5, "q": 0.1, "kind": "blur"},
    "cam-occlusion p=1.0 q=0.1 erase": {"p": 1.0, "q": 0.1, "kind": "erase"},
}


def in_memory_loader(batches: int, batch_size: int, size: int) -> Loader:
    """Fixed uint8 batches (no decoding), so the table measures the model work only."""
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                           generator=generator),
             torch.randint(0, CLASSES, (batch_size,), generator=generator))
            for _ in range(batches)]
    return Loader(batches=data, num_images=batches * batch_size,
                  normalize=Normalize(*normalization()))


def one_epoch(model: nn.Module, loader: Loader, config: TrialConfig, device: torch.device,
              hook: dict | None, batch_mix=None) -> float:
    """images/s of one epoch of the real loop, with the batch hook `hook` (or none) and the
    mix `batch_mix` (bench/recipes.py; or none)."""
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    batch_hook = CamOcclusion(**hook, seed=0) if hook else None
    model.train()
    metrics = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, scheduler,
                              scaler, device, batch_hook=batch_hook, batch_mix=batch_mix)
    return metrics["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resize", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6, help="batches per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="epochs per variant (median)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start_load = load_average()
    config = TrialConfig(epochs=1, resize=args.resize, batch_size=args.batch_size,
                         device=args.device, lr=0.01)
    device = resolve_device(config.device)
    torch.manual_seed(0)
    model = build_model(CLASSES, "none").to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = in_memory_loader(args.batches, args.batch_size, args.resize)
    loader.channels_last = device.type == "cuda"
    one_epoch(model, loader, config, device, None)  # warm-up: allocators, kernels
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, hook in VARIANTS.items():
            rates[name].append(one_epoch(model, loader, config, device, hook))

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    print(describe(start_load, device=gpu))
    print(f"ResNet-18, {args.resize} px, batch {args.batch_size}, {args.batches} batches per "
          f"epoch, median of {args.rounds} interleaved epochs, {device}\n")
    baseline = rates[next(iter(VARIANTS))]
    print("| training | images/s (median) | range | vs without (median of per-round ratios) |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        # Each round's ratio compares epochs run back to back, so a load swing between rounds
        # cancels out; its median is steadier than a ratio of medians on a busy machine.
        ratio = statistics.median(v / b for v, b in zip(values, baseline, strict=True))
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} "
              f"| {ratio:.2f} |")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
