"""The pre-flight's image check at Stanford Cars' size: what it costs a sweep whose trials decode.

    .venv/bin/python bench/preflight_hash.py --small               # seconds: a few images
    carsweep synth /tmp/cars-full/source --preset cars             # the full 16,185 images
    carsweep prepare /tmp/cars-full/source --out /tmp/cars-full/prepared
    .venv/bin/python bench/preflight_hash.py --prepared /tmp/cars-full/prepared

Where trials decode the images themselves (`data_cache: off`, or `resize` searched as a range),
the pre-flight has every node hash each train+val image against the sha1 `prepare` recorded
(carsweep/search/preflight/nodes.py, `changed_images_problem`, 8 threads), so an image changed
since would be named before launch, not by every trial's traceback; the driver first sums the
images' sizes (`images_bytes`, a stat of each) for the probe's timeout. Side by side, in
`--rounds` interleaved rounds (medians printed):

  stat        the driver's `images_bytes`
  hash, cold  `changed_images_problem` with the JPEGs' pages dropped from the page cache first
              (posix_fadvise DONTNEED): a node reading them from its disk
  hash, warm  the same with the JPEGs in the page cache (a node that read them just before)
  decode      the pass the check sits beside: a decoded-cache build of the same images at
              `--size` px (carsweep/data/cache_build.py, one forked decoder per core, cold), the
              work of one epoch's decoding for a trial that decodes

Every row's ratio is against the decode row of the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cache_build import small_dataset
from machine import describe, evict_from_page_cache, load_average

from carsweep.data.cache_build import build_cache
from carsweep.data.manifest import load_dataset
from carsweep.search.preflight.nodes import (
    HASH_THREADS,
    SPLITS_READ,
    changed_images_problem,
    images_bytes,
)


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def evict_images(dataset) -> None:
    for path in dataset.rows(*SPLITS_READ)["path"]:
        evict_from_page_cache(dataset.image_path(path))


def one_round(prepared: Path, size: int, workers: int, tmp: Path) -> dict[str, float]:
    dataset = load_dataset(prepared)
    seconds = {"stat": timed(lambda: images_bytes(str(prepared)))[0]}
    evict_images(dataset)
    seconds["hash, cold"], found = timed(lambda: changed_images_problem(str(prepared)))
    if found is not None:
        raise SystemExit(f"the check found a changed image in a fresh dataset: {found}")
    seconds["hash, warm"] = timed(lambda: changed_images_problem(str(prepared)))[0]
    evict_images(dataset)
    with tempfile.TemporaryDirectory(prefix="carsweep-bench-hash-", dir=tmp) as caches:
        seconds["decode"] = timed(lambda: build_cache(dataset, size, cache_dir=Path(caches),
                                                      workers=workers, progress=False))[0]
    return seconds


def run(args: argparse.Namespace) -> dict:
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="carsweep-bench-hash-", dir=args.tmp) as tmp:
        prepared = args.prepared or small_dataset(Path(tmp), args.workers)
        dataset = load_dataset(prepared)
        images = len(dataset.rows(*SPLITS_READ))
        total = images_bytes(str(prepared))
        rounds = [one_round(prepared, args.size, args.workers, Path(tmp))
                  for _ in range(args.rounds)]
    rows = []
    for name in ("stat", "hash, cold", "hash, warm", "decode"):
        median = statistics.median(r[name] for r in rounds)
        ratio = statistics.median(r[name] / r["decode"] for r in rounds)
        rows.append({"row": name, "seconds": round(median, 2),
                     "images_per_s": round(images / median),
                     "mb_per_s": round(total / median / 1e6), "of_decode": round(ratio, 3)})
    return {"machine": describe(start_load), "dataset": str(prepared), "images": images,
            "bytes": total, "threads": HASH_THREADS, "workers": args.workers, "size": args.size,
            "rounds": args.rounds, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, help="a prepared dataset (default: --small)")
    parser.add_argument("--small", action="store_true",
                        help="draw and prepare a few Cars-shaped images (the default without "
                        "--prepared), one round at 64 px")
    parser.add_argument("--size", type=int, help="the decode row's input size (default 400)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes of the decode row (default: all cores)")
    parser.add_argument("--tmp", help="where the caches are built (default $TMPDIR)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    small = args.small or args.prepared is None
    args.prepared = None if small else args.prepared
    args.size = args.size or (64 if small else 400)
    args.rounds = args.rounds or (1 if small else 3)
    result = run(args)
    print(result["machine"])
    print(f"pre-flight image check of {result['dataset']}: {result['images']:,} train+val "
          f"images, {result['bytes'] / 1e9:.2f} GB, {result['threads']} hashing threads; "
          f"decode: a {result['size']} px cache build in {result['workers']} processes; "
          f"medians of {result['rounds']} round(s)")
    print("| row | seconds | images/s | MB/s | ÷ decode (same round) |")
    print("|---|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['row']} | {row['seconds']:.2f} | {row['images_per_s']:,} "
              f"| {row['mb_per_s']:,} | {row['of_decode']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
