"""Time one training epoch of `carsweep.trainable.train` and print images/s, split by where the
time goes: decoding + augmenting alone, the model step alone (in-memory tensors), and the real
epoch (both together). Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/train_epoch.py [--data DATASET] [--resize 64] [--images 256]

Without --data it writes a synthetic dataset of noise JPEGs (320x240, so decoding costs what a
small photo costs) in a temporary folder. Run on an idle machine; other processes skew it.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import MANIFEST_COLUMNS, load_dataset
from carsweep.trainable import build_loader, build_model, resolve_device, train
from carsweep.trainable.loop import autocast


def write_noise_dataset(folder: Path, images: int, classes: int = 8) -> Path:
    """A prepared dataset of `images` random 320x240 JPEGs, all in the train split."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(images):
        label = index % classes
        relative = f"c{label}/{index}.jpg"
        (folder / "images" / f"c{label}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / relative, quality=90)
        rows.append({"path": relative, "label": label, "class_name": f"c{label}",
                     "source_split": "train", "split": "train", "sha1": str(index),
                     "width": 320, "height": 240})
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(folder / "manifest.csv", index=False)
    (folder / "classes.json").write_text(json.dumps([f"c{i}" for i in range(classes)]))
    (folder / "dataset.json").write_text(json.dumps({"root": "images", "split_scheme": "bench"}))
    return folder


class Quiet:
    def __init__(self):
        self.metrics = []

    def report(self, metrics, checkpoint_dir):
        self.metrics.append(metrics)


def data_only(dataset, config, device) -> float:
    """images/s of the data path alone: decode, resize, augment, collate, normalise."""
    loader = build_loader(dataset, "train", config, train=True, device=device)
    start = time.perf_counter()
    for images, _ in loader:
        loader.to_model_input(images.to(device))
    return loader.num_images / (time.perf_counter() - start)


def model_only(num_classes, config, device, steps: int) -> float:
    """images/s of forward + backward + SGD step on one batch held in memory."""
    model = build_model(num_classes, "none").to(device).train()
    x = torch.randn(config.batch_size, 3, config.resize, config.resize, device=device)
    if device.type == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (config.batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(steps + 1):
        if step == 1:  # the first step warms up allocators and kernels
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared dataset (default: synthetic JPEGs)")
    parser.add_argument("--images", type=int, default=256, help="synthetic images")
    parser.add_argument("--resize", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--augmentation", default="flip")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrialConfig(epochs=1, resize=args.resize, batch_size=args.batch_size,
                         num_workers=args.workers, augmentation=args.augmentation,
                         device=args.device)
    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or write_noise_dataset(Path(tmp), args.images)
        dataset = load_dataset(folder)
        decode = data_only(dataset, config, device)
        steps = max(3, min(20, len(dataset.rows("train")) // config.batch_size))
        compute = model_only(dataset.num_classes, config, device, steps)
        reporter = Quiet()
        start = time.perf_counter()
        train(config, dataset, reporter=reporter, eval_split=None)
        wall = time.perf_counter() - start
    epoch = reporter.metrics[0]
    where = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    print(f"machine: {platform.node()} {where or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"{len(dataset.rows('train'))} images at {config.resize} px, batch {config.batch_size},"
          f" {config.num_workers} workers, augmentation {config.augmentation}, {device}\n")
    print("| part | images/s |\n|---|---|")
    print(f"| data path only (decode, resize, augment) | {decode:.0f} |")
    print(f"| model step only (fwd+bwd+sgd) | {compute:.0f} |")
    print(f"| one epoch of train() (reported images_per_s) | {epoch['images_per_s']:.0f} |")
    print(f"\nepoch wall time incl. model build and checkpoint: {wall:.1f} s; "
          f"epoch / min(data, model) = {epoch['images_per_s'] / min(decode, compute):.2f}")


if __name__ == "__main__":
    main()
