"""`carsweep synth OUT`: draw a synthetic car-like dataset.

Two presets: `demo` (carsweep/data/synth.py: a few classes of small pictures whose class is
one known part, for the demo and the tests) and `cars` (carsweep/data/synth_cars.py: Stanford
Cars' shape, 196 classes of 700x480 JPEGs at the official split sizes, for rehearsing the
full-size path). Options that only one preset has are refused for the other.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from carsweep.cli.arguments import COUNT, SEED
from carsweep.errors import UserError

HELP = "draw a synthetic car-like dataset (demo: class = a known part; cars: Stanford Cars' shape)"
DEMO_ONLY = ("size", "cues", "shape_only", "layout", "image_format")  # cars: fixed 700x480 JPEG
CARS_ONLY = ("workers",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write (created)")
    parser.add_argument("--preset", default="demo", choices=("demo", "cars"),
                        help="demo (default): small pictures, class = one known part; cars: "
                        "196 classes of 700x480 JPEGs, 8,144 train / 8,041 test images")
    parser.add_argument("--classes", type=int,
                        help="number of classes (demo: 2-8, default 4; cars: 2-196, default 196)")
    parser.add_argument("--per-class", type=int,
                        help="train images per class (demo: 60; cars: the official 41-42)")
    parser.add_argument("--test-per-class", type=int,
                        help="test images per class (demo: a third of --per-class; cars: the "
                        "official 41-42)")
    parser.add_argument("--seed", type=SEED, default=0, help="random seed (0)")
    parser.add_argument("--workers", type=COUNT,
                        help="cars: processes drawing images (default: all cores)")
    parser.add_argument("--size", type=int, help="demo: image side in pixels (96)")
    parser.add_argument("--cues",
                        help="demo: part(s) that decide the class: headlight (default), wheel or "
                        "headlight+wheel")
    parser.add_argument("--shape-only", action="store_true", default=None,
                        help="demo: the cue part's shape alone decides the class (no class "
                        "colours)")
    parser.add_argument("--layout", choices=("class-csv", "imagefolder"),
                        help="demo: class-csv: class folders + anno CSVs with car boxes "
                        "(default); imagefolder: class folders only")
    parser.add_argument("--format", dest="image_format", choices=("png", "jpg"),
                        help="demo: png (default) or jpg")
    parser.add_argument("--force", action="store_true",
                        help="replace a non-empty OUT (an earlier synthetic dataset is always "
                        "replaced)")


def run(args: argparse.Namespace) -> int:
    _refuse_other_presets_options(args)
    started = time.perf_counter()
    if args.preset == "cars":
        from carsweep.data.synth_cars import make_cars_dataset

        out = make_cars_dataset(args.out, classes=_default(args.classes, 196),
                                per_class=args.per_class,
                                test_per_class=args.test_per_class, seed=args.seed,
                                workers=args.workers, force=args.force)
        what, suffix = "700x480 JPEG", "jpg"
    else:
        from carsweep.data.synth import make_synthetic_dataset

        out = make_synthetic_dataset(
            args.out, classes=_default(args.classes, 4), per_class=_default(args.per_class, 60),
            test_per_class=args.test_per_class, size=_default(args.size, 96), seed=args.seed,
            cues=tuple((args.cues or "headlight").split("+")),
            coloured_parts=not args.shape_only, layout=args.layout or "class-csv",
            image_format=args.image_format or "png", force=args.force,
        )
        what = f"{_default(args.size, 96)} px, cue: {args.cues or 'headlight'}"
        suffix = args.image_format or "png"
    images = list(out.glob(f"*/*/*.{suffix}"))
    classes = len({image.parent.name for image in images})
    megabytes = sum(image.stat().st_size for image in images) / 1e6
    print(f"wrote {len(images):,} images of {classes} classes ({what}, {megabytes:,.1f} MB) "
          f"to {out} in {time.perf_counter() - started:.1f} s")
    return 0


def _default(value: int | None, default: int) -> int:
    """The preset's default where the flag was not given (a given 0 stays 0, and is refused)."""
    return default if value is None else value


def _refuse_other_presets_options(args: argparse.Namespace) -> None:
    other = DEMO_ONLY if args.preset == "cars" else CARS_ONLY
    given = [name for name in other if getattr(args, name) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-").replace("image-format", "format")
        raise UserError(f"{flag} does not apply to --preset {args.preset}; it is an option of "
                        f"--preset {'demo' if args.preset == 'cars' else 'cars'}")
