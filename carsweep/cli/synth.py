"""`carsweep synth OUT`: draw the synthetic car-like dataset (see carsweep/data/synth.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "draw a synthetic car-like dataset whose class is decided by one known part"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write (created)")
    parser.add_argument("--classes", type=int, default=4, help="number of classes (2-8; 4)")
    parser.add_argument("--per-class", type=int, default=60,
                        help="train images per class (60); test gets a third of it")
    parser.add_argument("--test-per-class", type=int, help="test images per class")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--cues", default="headlight",
                        help="part(s) that decide the class: headlight, wheel or headlight+wheel")
    parser.add_argument("--shape-only", action="store_true",
                        help="the cue part's shape alone decides the class (no class colours)")
    parser.add_argument("--layout", default="class-csv", choices=("class-csv", "imagefolder"),
                        help="class-csv: class folders + anno CSVs with car boxes (default); "
                        "imagefolder: class folders only")
    parser.add_argument("--format", dest="image_format", default="png", choices=("png", "jpg"))
    parser.add_argument("--force", action="store_true",
                        help="replace a non-empty OUT (an earlier synthetic dataset is always "
                        "replaced)")


def run(args: argparse.Namespace) -> int:
    from carsweep.data.synth import make_synthetic_dataset
    started = time.perf_counter()
    out = make_synthetic_dataset(
        args.out, classes=args.classes, per_class=args.per_class,
        test_per_class=args.test_per_class, size=args.size, seed=args.seed,
        cues=tuple(args.cues.split("+")), coloured_parts=not args.shape_only,
        layout=args.layout, image_format=args.image_format, force=args.force,
    )
    count = sum(1 for _ in out.glob(f"*/*/*.{args.image_format}"))
    print(f"wrote {count} images of {args.classes} classes ({args.size} px, cue: {args.cues}) "
          f"to {out} in {time.perf_counter() - started:.1f} s")
    return 0

