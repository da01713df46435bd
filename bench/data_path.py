"""Data path at Stanford Cars' size, CPU: images/s per core the loader gives a trial, side by side.

    carsweep synth /tmp/cars-full/source --preset cars               # 16,185 JPEGs, 700x480
    carsweep prepare /tmp/cars-full/source --out /tmp/cars-full/prepared
    .venv/bin/python bench/data_path.py --prepared /tmp/cars-full/prepared --size 400
    .venv/bin/python bench/data_path.py --small                      # seconds (the test runs it)

On the training split of a prepared Cars-shaped set (7,360 images on the official split), in
one process, with `--cores` CPU cores given to the loader:

  seed-style   the seed's loader: PIL open + convert RGB, Resize((S, S)), ToTensor,
               Normalize, in a DataLoader with one worker per core (every epoch decodes
               every JPEG again); timed on the first `--seed-images` of a shuffled epoch
  warm         carsweep's `build_loader` over the decoded cache (built first if missing),
               uint8 batches as a GPU trial's CPU side hands them over, one loader for the
               trial as `train` makes it, `--epochs` timed epochs with the file in RAM
  cold         the same, one epoch of a fresh loader right after the cache file's pages
               are dropped from the page cache (posix_fadvise DONTNEED): read from the disk
  warm, float  warm plus `to_model_input` on the CPU (normalisation): a CPU-only trial;
               and the same with the batch normalised in one piece (`images.float()` then
               scale and shift in place: what Normalize did before it worked in chunks)
  <preset>     each per-image preset: its per-image CPU form in the loader's workers
               (augment_on: cpu) vs its batch op on the CPU device in this process
               (augment_on: device; on a GPU box it runs on the GPU), both followed by
               `to_model_input`, on the first `--preset-images` of an epoch

"per core" divides by the cores the variant uses: `--cores` worker processes for the seed-style
and per-image rows, one (this process; torch threads 1) for the cached and batch-op rows. The
seed-style and warm rows run in `--rounds` interleaved rounds, so a load change on a shared
machine hits both alike; medians are printed, and every ratio is against the seed-style rate
per core of the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from machine import describe, evict_from_page_cache, load_average
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from carsweep.config.trial import TrialConfig
from carsweep.data.cache_build import build_cache
from carsweep.data.manifest import PreparedDataset, load_dataset
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth_cars import make_cars_dataset
from carsweep.trainable.augment import AUGMENTATIONS, normalization
from carsweep.trainable.data import build_loader

SMALL = {"classes": 4, "per_class": 16, "test_per_class": 2}


class SeedStyleImages(Dataset):
    """The seed's pipeline over manifest rows: what torchvision's ImageFolder loader does."""

    def __init__(self, dataset: PreparedDataset, rows: pd.DataFrame, size: int) -> None:
        self.paths = [str(dataset.image_path(p)) for p in rows["path"]]
        self.labels = rows["label"].tolist()
        mean, std = normalization()
        self.transform = transforms.Compose([transforms.Resize((size, size)),
                                             transforms.ToTensor(),
                                             transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def timed(batches, limit: int | None, finish=lambda images: None) -> float:
    """images/s over the first `limit` images of one pass (all of it when None)."""
    seen, start = 0, time.perf_counter()
    for images, labels in batches:
        finish(images)
        seen += len(labels)
        if limit is not None and seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def seed_style(dataset: PreparedDataset, args: argparse.Namespace) -> DataLoader:
    images = SeedStyleImages(dataset, dataset.rows("train"), args.size)
    return DataLoader(images, batch_size=args.batch, shuffle=True, num_workers=args.cores,
                      persistent_workers=args.cores > 0)


def trial_config(args: argparse.Namespace, **changes) -> TrialConfig:
    settings = {"resize": args.size, "batch_size": args.batch, "num_workers": args.cores,
                "augmentation": "none", "device": "cpu", "epochs": 1,
                "cache_dir": str(args.cache_dir)}
    return TrialConfig(**(settings | changes))


def warm_epochs(dataset: PreparedDataset, args: argparse.Namespace) -> list[float]:
    """images/s of each of `--epochs` epochs of one loader, after one untimed epoch."""
    loader = build_loader(dataset, "train", trial_config(args), train=True)
    timed(loader, None)  # the file into RAM, as a trial's first epoch leaves it
    return [timed(loader, None) for _ in range(args.epochs)]


def cold_epoch(dataset: PreparedDataset, array: Path, args: argparse.Namespace) -> float:
    gc.collect()
    evict_from_page_cache(array)
    return timed(build_loader(dataset, "train", trial_config(args), train=True), None)


def float_epoch(dataset: PreparedDataset, args: argparse.Namespace, *, one_piece: bool) -> float:
    loader = build_loader(dataset, "train", trial_config(args), train=True)
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in normalization())
    scale, shift = 1 / (255 * std), -mean / std

    def in_one_piece(images: torch.Tensor) -> torch.Tensor:
        return images.float().mul_(scale).add_(shift)

    return timed(loader, None, finish=in_one_piece if one_piece else loader.to_model_input)


def preset_rates(dataset: PreparedDataset, name: str, args: argparse.Namespace) -> dict:
    """images/s of preset `name`: per image in `--cores` workers, and as a batch op here."""
    rates = {}
    for where, workers in (("cpu", args.cores), ("device", 0)):
        loader = build_loader(dataset, "train", trial_config(
            args, augmentation=name, augment_on=where, num_workers=workers), train=True)
        timed(loader, args.batch)  # workers started, first pages read
        rates[where] = timed(loader, args.preset_images, finish=loader.to_model_input)
        del loader
    return {"preset": name, "cpu_per_image": rates["cpu"],
            "cpu_per_image_per_core": rates["cpu"] / args.cores,
            "batch_op": rates["device"], "batch_op_per_core": rates["device"]}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # the cached and batch-op rows use this process's one core
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="carsweep-bench-data-") as tmp:
        if args.prepared is None:
            source = make_cars_dataset(Path(tmp) / "source", workers=args.cores,
                                       progress=False, **SMALL)
            args.prepared = prepare_dataset(source, Path(tmp) / "prepared",
                                            warn=lambda line: None).folder
        args.cache_dir = args.cache_dir or Path(tmp) / "caches"
        dataset = load_dataset(args.prepared)
        started = time.perf_counter()
        array = build_cache(dataset, args.size, cache_dir=args.cache_dir, workers=args.cores,
                            progress=False)
        build_s = time.perf_counter() - started
        seed = seed_style(dataset, args)
        timed(seed, args.batch)  # workers started
        rounds = {"seed": [], "warm": []}
        for _ in range(args.rounds):
            rounds["seed"].append(timed(seed, args.seed_images))
            rounds["warm"].append(statistics.median(warm_epochs(dataset, args)))
        del seed
        result = {
            "seed": statistics.median(rounds["seed"]),
            "warm": statistics.median(rounds["warm"]),
            "cold": cold_epoch(dataset, array, args),
            "warm_float": float_epoch(dataset, args, one_piece=False),
            "warm_float_one_piece": float_epoch(dataset, args, one_piece=True),
            "presets": [preset_rates(dataset, name, args) for name, preset
                        in AUGMENTATIONS.items()
                        if name != "none" and not preset.per_batch
                        and (not args.presets or name in args.presets)],
        }
        images = len(dataset.rows("train"))
    seed_per_core = result["seed"] / args.cores
    return {
        "machine": describe(start_load), "dataset": str(args.prepared), "size": args.size,
        "train_images": images, "batch": args.batch, "cores": args.cores,
        "epochs": args.epochs, "rounds": args.rounds, "cache_build_s": round(build_s, 1),
        "round_rates": {k: [round(v) for v in values] for k, values in rounds.items()},
        "rows": [
            {"what": "seed-style", "images_per_s": result["seed"], "cores": args.cores},
            {"what": "cached uint8, warm", "images_per_s": result["warm"], "cores": 1},
            {"what": "cached uint8, cold", "images_per_s": result["cold"], "cores": 1},
            {"what": "cached, warm, normalised on the CPU", "images_per_s": result["warm_float"],
             "cores": 1},
            {"what": "cached, warm, normalised on the CPU in one piece",
             "images_per_s": result["warm_float_one_piece"], "cores": 1},
        ],
        "presets": result["presets"], "seed_per_core": seed_per_core,
    }


def print_result(result: dict) -> None:
    seed = result["seed_per_core"]
    print(result["machine"])
    print(f"data path of {result['dataset']}: {result['train_images']:,} training images at "
          f"{result['size']} px, batch {result['batch']}, {result['cores']} cores for the "
          f"loader; cache build {result['cache_build_s']} s; rounds {result['round_rates']}")
    print("| what | images/s | cores | images/s per core | vs seed-style per core |")
    print("|---|---|---|---|---|")
    for row in result["rows"]:
        per_core = row["images_per_s"] / row["cores"]
        print(f"| {row['what']} | {row['images_per_s']:,.0f} | {row['cores']} "
              f"| {per_core:,.0f} | {per_core / seed:.1f}x |")
    print("| preset | per image on the CPU, per core | batch op on the CPU device, per core "
          "| batch op / per image |")
    print("|---|---|---|---|")
    for row in result["presets"]:
        print(f"| {row['preset']} | {row['cpu_per_image_per_core']:,.0f} "
              f"| {row['batch_op_per_core']:,.0f} "
              f"| {row['batch_op_per_core'] / row['cpu_per_image_per_core']:.2f}x |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, help="a prepared Cars-shaped set "
                        "(default: --small draws a few images)")
    parser.add_argument("--small", action="store_true", help="seconds: 64 images at 64 px")
    parser.add_argument("--size", type=int, default=400, help="square input size in px")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1),
                        help="loader worker processes for the seed-style and per-image rows")
    parser.add_argument("--epochs", type=int, default=3, help="timed warm epochs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed-images", type=int, default=1280)
    parser.add_argument("--preset-images", type=int, default=640)
    parser.add_argument("--presets", nargs="*", help="only these presets")
    parser.add_argument("--cache-dir", type=Path, help="where the cache is (built if missing)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.small or args.prepared is None:
        args.prepared = None
        args.size, args.rounds, args.epochs = 64, 1, 1
        args.seed_images, args.preset_images, args.batch = 32, 16, 8
    result = run(args)
    print_result(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
