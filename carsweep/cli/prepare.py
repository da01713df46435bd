"""`carsweep prepare SOURCE --out DATASET`: index, audit and split a dataset source.

Reads the Stanford Cars devkit, the class-folder + CSV layout or any ImageFolder tree
(`--layout auto` detects which), decodes every image, splits the images, and writes the
prepared dataset folder described in carsweep/data/manifest.py. The images stay where they are.
SOURCE and DATASET may be bucket URIs (s3://BUCKET/PREFIX, gs://...): a source there is staged
on this machine first, a dataset there is built here and uploaded (carsweep/data/bucket_source.py).
"""

from __future__ import annotations

import argparse
import sys

from carsweep.cli.arguments import COUNT, COUNT_OR_NONE, SEED
from carsweep.errors import UserError

HELP = "index, audit and split a dataset (devkit, class folders + CSV, ImageFolder)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="the dataset's folder, or its s3://BUCKET/PREFIX (staged here)")
    parser.add_argument("--out", required=True, metavar="DATASET",
                        help="prepared dataset folder to write, or an s3://BUCKET/PREFIX")
    parser.add_argument("--layout", default="auto",
                        help="auto (default), devkit, class-csv or imagefolder")
    parser.add_argument("--split", default="official",
                        help="official (source train/test, val carved from train; default) or "
                        "pooled:R (pool all, R to train+val, e.g. pooled:0.7)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of each class's train images held out for validation (0.1)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the split (0)")
    parser.add_argument("--strict", action="store_true",
                        help="an unreadable image is an error (default: left out with a warning)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty DATASET")
    parser.add_argument("--tiny-px", type=COUNT_OR_NONE, default=32,
                        help="report images whose shorter side is under this (32)")
    parser.add_argument("--workers", type=COUNT,
                        help="processes decoding images (default: up to 8 for large sources)")
    parser.add_argument("--cache", type=_sizes, default=(), metavar="S1,S2",
                        help="also decode the train+val images once per input size into a "
                        "memory-mapped uint8 cache (e.g. 256,400) that trials of that `resize` "
                        "on this machine read: warms this machine's cache up front")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="the caches' folder on this machine's local disk (default: "
                        "$CARSWEEP_CACHE_DIR, else /tmp/carsweep-cache-$USER)")


def _sizes(text: str) -> tuple[int, ...]:
    """'256,400' -> (256, 400); anything else is an argparse error naming it."""
    from carsweep.data.cache import check_size

    try:
        return tuple(check_size(int(part)) for part in text.split(",") if part.strip())
    except ValueError as error:
        detail = str(error) if "cache size" in str(error) else "expected pixel sizes"
        raise argparse.ArgumentTypeError(f"{text!r}: {detail}, e.g. 256,400") from None


def run(args: argparse.Namespace) -> int:
    from carsweep.data.prepare import prepare_dataset, summary

    if args.cache_dir is not None and not args.cache:
        raise UserError("--cache-dir is where --cache SIZES builds; give --cache too, "
                        "e.g. --cache 256,400")
    if args.cache and any("://" in place for place in (args.source, args.out)):
        raise UserError("--cache builds this machine's decoded caches from a local dataset and "
                        "images; with a source or --out in a bucket, prepare without --cache")
    dataset = prepare_dataset(
        args.source, args.out, layout=args.layout, split=args.split,
        val_fraction=args.val_fraction, seed=args.seed, strict=args.strict, force=args.force,
        tiny_px=args.tiny_px, workers=args.workers,
    )
    print(summary(dataset))
    if args.cache:
        warm_caches(dataset, args.cache, args.cache_dir, args.workers)
    return 0


def warm_caches(dataset, sizes: tuple[int, ...], cache_dir: str | None,
                workers: int | None) -> None:
    """Build this machine's decoded cache of each size (train+val), saying where each went."""
    from carsweep.data.cache import (
        cache_plan,
        format_bytes,
        resolve_cache_dir,
        shared_storage_warning,
    )
    from carsweep.data.cache_build import build_cache

    folder = resolve_cache_dir(cache_dir)
    shared = {"the prepared dataset": dataset.folder, "the image folder": dataset.root}
    warning = shared_storage_warning(folder, shared)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    for size in sizes:
        plan = cache_plan(dataset, size, cache_dir=folder)
        there = plan.state == "fresh"
        path = build_cache(dataset, size, cache_dir=folder, workers=workers)
        print(f"decoded cache {plan.label} ({plan.count:,} train+val images, "
              f"{format_bytes(path.stat().st_size)}): {path}{' (already there)' if there else ''}")
