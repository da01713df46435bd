"""Decoded-cache build: time, images/s and size per input size, on a Stanford-Cars-shaped set.

    .venv/bin/python bench/cache_build.py --small                  # seconds: 4 classes, 64/96 px
    carsweep synth /tmp/cars-full/source --preset cars             # the full 16,185 images
    carsweep prepare /tmp/cars-full/source --out /tmp/cars-full/prepared
    .venv/bin/python bench/cache_build.py --prepared /tmp/cars-full/prepared --sizes 256,400

What a sweep's prebuild does on each node (carsweep/data/cache_build.py, `build_cache`): decode the
train+val JPEGs (8,144 of the 16,185 on the official split) and resize them, in one forked
process per core, into a fresh cache folder on the local disk, one size after the other. Each
size is built into a new folder, so nothing is reused; the JPEGs' own pages are dropped from
the page cache first (posix_fadvise DONTNEED), so the first size reads them from the disk as a
node would. Prints the machine line (load average at start and end) and one row per size:
wall time and images/s, and the CPU time the build used (this process and its decoders), whose
images per CPU-second the other processes of a shared machine change far less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, evict_from_page_cache, load_average

from carsweep.data.cache import cache_plan, format_bytes
from carsweep.data.cache_build import build_cache
from carsweep.data.manifest import load_dataset
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth_cars import make_cars_dataset

SMALL = {"classes": 4, "per_class": 12, "test_per_class": 3}


def small_dataset(folder: Path, workers: int) -> Path:
    """A few Cars-shaped images, drawn and prepared in `folder`."""
    source = make_cars_dataset(folder / "source", workers=workers, progress=False, **SMALL)
    return prepare_dataset(source, folder / "prepared", val_fraction=0.25,
                           warn=lambda line: None).folder


def measure(dataset, size: int, cache_dir: Path, workers: int) -> dict:
    for path in dataset.rows("train", "val")["path"]:
        evict_from_page_cache(dataset.image_path(path))
    load, cpu = load_average(), cpu_seconds()
    started = time.perf_counter()
    array = build_cache(dataset, size, cache_dir=cache_dir, workers=workers, progress=False)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    count = cache_plan(dataset, size, cache_dir=cache_dir).count
    return {"size": size, "images": count, "seconds": round(seconds, 1),
            "images_per_s": round(count / seconds, 1), "bytes": array.stat().st_size,
            "cpu_s": round(cpu, 1), "images_per_cpu_s": round(count / cpu, 1),
            "load_start": round(load, 1), "load_end": round(load_average(), 1)}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (the decoders): on a
    shared machine, images per CPU-second is what the load does not change much."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(args: argparse.Namespace) -> dict:
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="carsweep-bench-cache-", dir=args.tmp) as tmp:
        prepared = args.prepared or small_dataset(Path(tmp), args.workers)
        dataset = load_dataset(prepared)
        rows = [measure(dataset, size, Path(tmp) / f"caches-{size}", args.workers)
                for size in args.sizes]
    return {"machine": describe(start_load), "dataset": str(prepared), "workers": args.workers,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, help="a prepared dataset (default: --small)")
    parser.add_argument("--small", action="store_true",
                        help="draw and prepare a few Cars-shaped images (the default without "
                        "--prepared); sizes 64,96 unless --sizes")
    parser.add_argument("--sizes", help="input sizes in px (default 256,400; --small: 64,96)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes (default: all cores, as a node's prebuild)")
    parser.add_argument("--tmp", help="where the caches are built (a local disk; default $TMPDIR)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    small = args.small or args.prepared is None
    args.prepared = None if small else args.prepared
    args.sizes = [int(s) for s in (args.sizes or ("64,96" if small else "256,400")).split(",")]
    result = run(args)
    print(result["machine"])
    print(f"cache build of {result['dataset']}, train+val, {result['workers']} processes")
    print("| size | train+val images | build time | images/s | CPU time | images per CPU-s "
          "| cache size | load (start, end) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['size']} px | {row['images']:,} | {row['seconds']:.1f} s "
              f"| {row['images_per_s']:,.0f} | {row['cpu_s']:.0f} s "
              f"| {row['images_per_cpu_s']:.0f} "
              f"| {format_bytes(row['bytes'])} ({row['bytes'] / 2**30:.2f} GiB) "
              f"| {row['load_start']}, {row['load_end']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
