"""Where the cached data path's time goes at Stanford Cars' size: each way of getting a batch of
rows out of the cache file, timed alone, side by side.

    .venv/bin/python bench/data_pieces.py /tmp/carsweep-cache/400px-<key>.u8.npy
    .venv/bin/python bench/data_pieces.py --small        # seconds, on a small file it writes

Each variant reads `--batches` batches of `--batch` random rows (sorted within the batch, as
the loader reads them) in one thread, from a fresh map or descriptor, in `--rounds`
interleaved rounds (medians printed), all warm rounds before the cold ones:

  memmap gather, new map      numpy fancy index of a fresh np.load(mmap_mode="r"): what a new
                              trial or worker did before (each 4 kB page faulted in once)
  memmap gather, mapped       the same rows again through the same map (no faults left)
  pread, torch.empty batch    one pread per row into a new torch.empty batch (15 MB mapped
                              afresh by malloc and faulted in, every batch)
  pread, numpy batch          one pread per row into a new numpy batch (huge pages where the
                              kernel offers them): what CachedBatches does now
  + share_memory_()           the numpy batch then moved to shared memory: what a DataLoader
                              worker adds to hand a batch to the training process
  cold: ...                   memmap gather / pread / pread after POSIX_FADV_WILLNEED for the
                              batch's rows, each after the file's pages were dropped
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

import numpy as np
import torch
from machine import describe, evict_from_page_cache, load_average

from carsweep.data.cache_read import CacheRows


def batches(count: int, rows: int, batch: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(order[i * batch:(i + 1) * batch]) for i in range(rows)]


def memmap_gather(path: Path, plan: list[np.ndarray], twice: bool = False) -> float:
    array = np.load(path, mmap_mode="r")
    if twice:
        for rows in plan:
            np.ascontiguousarray(array[rows])
    return _timed(plan, lambda rows: torch.from_numpy(np.ascontiguousarray(array[rows])))


def pread(path: Path, plan: list[np.ndarray], new_batch, *, hint: bool = True,
          share: bool = False) -> float:
    reader = CacheRows(path)
    shape, size = reader.shape[1:], reader.row_bytes
    descriptor = os.open(path, os.O_RDONLY)

    def read(rows: np.ndarray) -> torch.Tensor:
        out = new_batch((len(rows), *shape))
        if hint:
            reader.read(rows, out.numpy())
        else:  # the same preads, one row at a time, without telling the kernel first
            target = memoryview(out.numpy().reshape(-1))
            for index, row in enumerate(rows):
                os.preadv(descriptor, [target[index * size:(index + 1) * size]],
                          reader.offset + int(row) * size)
        return out.share_memory_() if share else out

    try:
        return _timed(plan, read)
    finally:
        os.close(descriptor)


def torch_batch(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.uint8)


def numpy_batch(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.empty(shape, dtype=np.uint8))


def _timed(plan: list[np.ndarray], read) -> float:
    start = time.perf_counter()
    for rows in plan:
        read(rows)
    return sum(map(len, plan)) / (time.perf_counter() - start)


def cold(path: Path, variant) -> float:
    evict_from_page_cache(path)
    return variant()


def warm_variants(path: Path, plan: list[np.ndarray]) -> dict:
    """{name: () -> images/s} with the file in the page cache, in the order they run."""
    return {
        "memmap gather, new map": lambda: memmap_gather(path, plan),
        "memmap gather, mapped": lambda: memmap_gather(path, plan, twice=True),
        "pread, torch.empty batch": lambda: pread(path, plan, torch_batch),
        "pread, numpy batch": lambda: pread(path, plan, numpy_batch),
        "pread, numpy batch + share_memory_()": lambda: pread(path, plan, numpy_batch,
                                                              share=True),
    }


def cold_variants(path: Path, plan: list[np.ndarray]) -> dict:
    """{name: () -> images/s}, each after the file's pages were dropped."""
    return {
        "cold: memmap gather": lambda: cold(path, lambda: memmap_gather(path, plan)),
        "cold: pread": lambda: cold(path, lambda: pread(path, plan, numpy_batch, hint=False)),
        "cold: pread after WILLNEED": lambda: cold(path, lambda: pread(path, plan,
                                                                       numpy_batch)),
    }


def run(args: argparse.Namespace) -> dict:
    start_load = load_average()
    count = np.load(args.path, mmap_mode="r").shape[0]
    with open(args.path, "rb") as handle:  # the whole file into the page cache
        while handle.read(1 << 24):
            pass
    rates: dict[str, list[float]] = {}
    plans = [batches(count, args.batches, args.batch, seed) for seed in range(args.rounds)]
    for plan in plans:  # all warm rounds first: a cold variant drops the file from RAM
        for name, variant in warm_variants(args.path, plan).items():
            rates.setdefault(name, []).append(variant())
    for plan in plans:
        for name, variant in cold_variants(args.path, plan[:args.cold_batches]).items():
            rates.setdefault(name, []).append(variant())
    shape = np.load(args.path, mmap_mode="r").shape
    return {"machine": describe(start_load), "file": str(args.path), "shape": list(shape),
            "batch": args.batch, "batches": args.batches, "rounds": args.rounds,
            "rows": [{"variant": name, "images_per_s": round(statistics.median(values)),
                      "rounds": [round(v) for v in values]} for name, values in rates.items()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, nargs="?", help="a cache .u8.npy file")
    parser.add_argument("--small", action="store_true", help="a 200-row 64 px file, seconds")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--cold-batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="carsweep-bench-pieces-") as tmp:
        if args.small or args.path is None:
            args.path = Path(tmp) / "small.u8.npy"
            np.save(args.path, np.random.default_rng(0).integers(
                0, 256, (200, 3, 64, 64), dtype=np.uint8))
            args.batch, args.batches, args.cold_batches, args.rounds = 8, 10, 5, 1
        result = run(args)
    print(result["machine"])
    print(f"cache rows of {result['file']} {tuple(result['shape'])}, batches of "
          f"{result['batch']} random rows, median of {result['rounds']} rounds")
    print("| variant | images/s (one thread) | rounds |")
    print("|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['variant']} | {row['images_per_s']:,} | {row['rounds']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
