"""Data path, CPU: images/s of the seed-style pipeline vs carsweep's cached path, side by side.

    .venv/bin/python bench/data_path.py                 # 300 JPEGs, 400 px, all cores
    .venv/bin/python bench/data_path.py --size 256 --images 600 --json out.json

On synthetic JPEGs of Stanford Cars' typical size (700x480, quality 90), in one process:

  (a) seed-style: torchvision ImageFolder (PIL open), Resize((S, S)), ToTensor, Normalize, in a
      DataLoader with one worker per core: every epoch decodes every JPEG again;
  (b) carsweep: `build_loader` of a prepared dataset with a decoded cache of S px (built first,
      timed): a batch is one gather from the memory-mapped uint8 file, then `to_model_input`
      makes the same normalised float tensors on the CPU (on a GPU box that step runs on the
      device, so (b, uint8) is what the GPU path really asks of the CPU).

Both get the same cores (DataLoader workers and torch threads), in interleaved rounds so a load
change on a shared machine hits both alike. Prints median images/s and (b)/(a).
The cache file is fresh in the page cache for (b); "cold" evicts the file's pages before each
pass (posix_fadvise DONTNEED), so every batch is read from the disk: a cache larger than RAM.
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

import numpy as np
import pandas as pd
import torch
from machine import describe, evict_from_page_cache, load_average
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from carsweep.config.trial import TrialConfig
from carsweep.data.cache import build_cache
from carsweep.data.manifest import MANIFEST_COLUMNS, load_dataset
from carsweep.trainable.augment import normalization
from carsweep.trainable.data import build_loader

WIDTH, HEIGHT, QUALITY, CLASSES = 700, 480, 90, 4


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` 700x480 quality-90 JPEGs in class folders: smooth colours, edges and noise, so
    they compress like photos (about 60-90 kB each) rather than flat fields."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    paths = []
    for index in range(count):
        colour = rng.uniform(40, 220, 3).astype(np.float32)
        phase = rng.uniform(0, 6.28, 3).astype(np.float32)
        waves = np.sin(xs[..., None] / rng.uniform(20, 90) + phase) * 40
        waves += np.cos(ys[..., None] / rng.uniform(15, 60) + phase) * 30
        pixels = colour + waves + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
        x1, y1 = rng.integers(0, WIDTH // 2), rng.integers(0, HEIGHT // 2)
        pixels[y1:y1 + HEIGHT // 3, x1:x1 + WIDTH // 3] = rng.uniform(0, 255, 3)
        path = folder / f"class{index % CLASSES}" / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=QUALITY)
        paths.append(path)
    return paths


def write_prepared(folder: Path, source: Path, paths: list[Path]) -> Path:
    """A prepared dataset (manifest.csv, classes.json, dataset.json) over the JPEGs, all train."""
    rows = [{"path": p.relative_to(source).as_posix(), "label": int(p.parent.name[5:]),
             "class_name": p.parent.name, "x1": None, "y1": None, "x2": None, "y2": None,
             "source_split": "", "split": "train", "sha1": f"{i:040x}", "width": WIDTH,
             "height": HEIGHT} for i, p in enumerate(paths)]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(folder / "manifest.csv", index=False)
    (folder / "classes.json").write_text(json.dumps([f"class{i}" for i in range(CLASSES)]))
    (folder / "dataset.json").write_text(json.dumps(
        {"root": str(source), "layout": "imagefolder", "split_scheme": "official", "seed": 0}))
    return folder


def images_per_second(batches, count: int, passes: int, finish=lambda b: b) -> float:
    """Deliver `passes` epochs (after one untimed warm-up pass) and return images/s."""
    for batch in batches:  # warm-up: worker start-up, first page-ins
        finish(batch)
    start = time.perf_counter()
    seen = 0
    for _ in range(passes):
        for batch in batches:
            finish(batch)
            seen += len(batch[1])
    return seen / (time.perf_counter() - start)


def cold_images_per_second(make_loader, path: Path) -> float:
    """images/s of one epoch of a fresh loader, with the cache file evicted from RAM first.
    Pages mapped by a live memmap are not evicted, so no other loader may hold one."""
    gc.collect()  # unmap the memmaps of loaders dropped before this call
    evict_from_page_cache(path)
    loader = make_loader()
    start = time.perf_counter()
    seen = sum(len(labels) for _, labels in loader)
    return seen / (time.perf_counter() - start)


def seed_style_loader(source: Path, size: int, batch: int, workers: int) -> DataLoader:
    mean, std = normalization()
    transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                    transforms.Normalize(mean, std)])
    return DataLoader(datasets.ImageFolder(str(source), transform=transform), batch_size=batch,
                      shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.workers)
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="carsweep-bench-") as tmp:
        source = Path(tmp) / "source"
        paths = write_jpegs(source, args.images)
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        dataset = load_dataset(write_prepared(Path(tmp) / "data", source, paths))
        caches = Path(tmp) / "caches"  # the same disk as the JPEGs
        started = time.perf_counter()
        array = build_cache(dataset, args.size, cache_dir=caches, workers=args.workers,
                            progress=False)
        build_s = time.perf_counter() - started
        config = TrialConfig(resize=args.size, batch_size=args.batch, num_workers=args.workers,
                             augmentation="none", device="cpu", epochs=1, cache_dir=str(caches))
        seed = seed_style_loader(source, args.size, args.batch, args.workers)
        rates: dict[str, list[float]] = {"seed": [], "float": [], "uint8": [], "cold": []}
        for _ in range(args.rounds):  # interleaved: a load change on a shared box hits all
            rates["seed"].append(images_per_second(seed, len(paths), args.seed_passes))
            cached = build_loader(dataset, "train", config, train=True)
            rates["uint8"].append(images_per_second(cached, len(paths), args.cached_passes))
            rates["float"].append(images_per_second(
                cached, len(paths), args.cached_passes,
                finish=lambda b, loader=cached: loader.to_model_input(b[0])))
            del cached  # its memmap would pin the file's pages in RAM
            rates["cold"].append(cold_images_per_second(
                lambda: build_loader(dataset, "train", config, train=True), array))
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "machine": describe(start_load),
        "size": args.size, "images": len(paths), "jpeg_kb": round(kb, 1),
        "workers": args.workers, "batch": args.batch, "rounds": args.rounds,
        "cache_build_s": round(build_s, 2),
        "cache_build_images_per_s": round(len(paths) / build_s, 1),
        "seed_images_per_s": round(median["seed"], 1),
        "cached_float_images_per_s": round(median["float"], 1),
        "cached_uint8_images_per_s": round(median["uint8"], 1),
        "cached_uint8_cold_images_per_s": round(median["cold"], 1),
        "ratio_float": round(median["float"] / median["seed"], 1),
        "ratio_cold": round(median["cold"] / median["seed"], 1),
        "ratio_uint8": round(median["uint8"] / median["seed"], 1),
        "round_ratios_float": [round(f / a, 1) for f, a in zip(rates["float"], rates["seed"],
                                                               strict=True)],
        "round_ratios_uint8": [round(u / a, 1) for u, a in zip(rates["uint8"], rates["seed"],
                                                               strict=True)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="synthetic JPEGs to make")
    parser.add_argument("--size", type=int, default=400, help="square input size in px")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="DataLoader workers and torch threads, the same for both paths")
    parser.add_argument("--seed-passes", type=int, default=1, help="timed epochs of (a)")
    parser.add_argument("--cached-passes", type=int, default=5, help="timed epochs of (b)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of (a) and (b); medians are printed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run(args)
    print(result["machine"])
    print(f"data path at {result['size']} px, {result['images']} JPEGs of {WIDTH}x{HEIGHT} "
          f"(~{result['jpeg_kb']} kB), {result['workers']} workers and torch threads, "
          f"median of {result['rounds']} interleaved rounds")
    print(f"  cache build            {result['cache_build_s']:8.2f} s "
          f"({result['cache_build_images_per_s']:.0f} images/s)")
    print(f"  (a) seed-style         {result['seed_images_per_s']:8.1f} images/s")
    print(f"  (b) cached, float      {result['cached_float_images_per_s']:8.1f} images/s   "
          f"(b)/(a) = {result['ratio_float']:.1f}x")
    print(f"  (b) cached, uint8      {result['cached_uint8_images_per_s']:8.1f} images/s   "
          f"(b)/(a) = {result['ratio_uint8']:.1f}x  (normalise on the GPU)")
    print(f"  (b) cached, uint8, cold{result['cached_uint8_cold_images_per_s']:8.1f} images/s   "
          f"(b)/(a) = {result['ratio_cold']:.1f}x  (file evicted from RAM: read from disk)")
    print(f"  per-round (b)/(a): float {result['round_ratios_float']}, "
          f"uint8 {result['round_ratios_uint8']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
