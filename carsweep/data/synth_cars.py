"""A Stanford-Cars-shaped synthetic source: 196 classes, 700x480 JPEGs, the official split sizes.

For rehearsing the full-size path (a decoded cache of 8,144 images at 400 px, a sweep at
Stanford Cars' scale, the data path's speed) without the real photos. What matters is the
shape, not the look: 196 classes with make-model-body-year names (21 with a "/", as "Ram C/V
Cargo Van Minivan 2012" has), 8,144 train and 8,041 test images by default (41 or 42 per
class, as the real 24-68 average out), 700x480 RGB JPEGs at quality 90 of about 100 kB each,
so decoding one costs what decoding a real photo costs, and a box per car.

Each picture is synth.py's cartoon car (`draw_car`, drawn at full size without supersampling:
at 700 px the edges need none). Class c is decided by its headlight: shape c % 8 of
synth_shapes.SHAPES in colour c // 8 of a 25-hue palette. The grain that gives the JPEGs a
photo's size is a crop at a random offset of one fixed noise image, added in C by PIL
(`ImageChops.add`): drawing fresh Gaussian noise per image would cost more than everything
else together.

Written in synth.py's class-csv layout (train/<class>/, test/<class>/, anno_*.csv, names.csv,
parts.csv with the headlight boxes, synth.json), which `carsweep prepare` reads. Deterministic
for a seed: image i of class c in split s depends only on (seed, s, c, i). Drawn in parallel
processes; written whole or not at all.
"""

from __future__ import annotations

import colorsys
import json
import os
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from carsweep.data.class_csv import folder_name
from carsweep.data.folders import building_folder, check_replaceable
from carsweep.data.manifest import PARTS_COLUMNS, PARTS_FILE
from carsweep.data.parallel import forked_map, progress_bar
from carsweep.data.synth import SPLIT_IDS, draw_car, write_csv
from carsweep.data.synth_shapes import SHAPES
from carsweep.errors import UserError

WIDTH, HEIGHT, QUALITY = 700, 480, 90
OFFICIAL = {"train": 8144, "test": 8041}  # Stanford Cars' split sizes
MAX_CLASSES = 196
HUES = 25  # 8 shapes x 25 colours >= 196 classes
GRAIN = 14  # the grain is uniform in [-14, 14] (standard deviation 8): ~100 kB per JPEG
TASK_IMAGES = 48  # images per task handed to a worker process

MAKES = ("Aldora", "Brenmark", "Castellan", "Dovetail", "Everline", "Falkner", "Granton",
         "Halvard", "Istra", "Jorvik", "Kestrel", "Lumina", "Marlow", "Norvane")
MODELS = ("A4", "Corsa", "Vento", "GT", "Ranger", "Sierra", "Nova", "Atlas", "Pulse", "Summit",
          "Tempo", "Vista", "Zephyr", "Orion")
BODIES = ("Sedan", "SUV", "Coupe", "Convertible", "Hatchback", "Wagon", "Minivan", "Crew Cab",
          "C/V Cargo Van")


def car_class_names(count: int) -> list[str]:
    """`count` distinct names like "Aldora Corsa Coupe 1996" (make, model, body, year)."""
    return [f"{MAKES[i % len(MAKES)]} {MODELS[i // len(MAKES)]} {BODIES[i % len(BODIES)]} "
            f"{1991 + (i * 5) % 22}" for i in range(count)]


def official_counts(split: str) -> list[int]:
    """Images per class of `split` in the 196-class set: the official total, spread evenly."""
    base, extra = divmod(OFFICIAL[split], MAX_CLASSES)
    return [base + (label < extra) for label in range(MAX_CLASSES)]


def make_cars_dataset(out: Path, *, classes: int = MAX_CLASSES, per_class: int | None = None,
                      test_per_class: int | None = None, seed: int = 0,
                      workers: int | None = None, progress: bool = True,
                      force: bool = False) -> Path:
    """Draw the Cars-shaped source into a new `out`; returns `out`.

    `per_class` / `test_per_class` images per class (default: the official counts of the
    first `classes` classes). `out` is replaced as synth.make_synthetic_dataset does."""
    counts = _counts(classes, per_class, test_per_class)
    out = Path(out)
    check_replaceable(out, force=force or (out / "synth.json").is_file(), what="the drawing",
                      flag="OUT")
    names = car_class_names(classes)
    jobs = [(split, label, index, number)  # number: unique in the split, like 00001.jpg
            for split, per_label in counts.items()
            for number, (label, index) in enumerate(
                ((label, index) for label, count in enumerate(per_label)
                 for index in range(count)), start=1)]
    with building_folder(out) as folder:
        for split in counts:
            for name in names:
                (folder / split / folder_name(name)).mkdir(parents=True)
        tasks = [(str(folder), names, seed, jobs[start:start + TASK_IMAGES])
                 for start in range(0, len(jobs), TASK_IMAGES)]
        rows = {"train": [], "test": [], "parts": []}
        with progress_bar(len(jobs), "drawing cars", progress) as advance:
            for drawn in forked_map(_draw_task, tasks, workers or os.cpu_count() or 1):
                for key, new in drawn.items():
                    rows[key].extend(new)
                advance(len(drawn["train"]) + len(drawn["test"]))
        for split in counts:
            write_csv(folder / f"anno_{split}.csv", rows[split])
        write_csv(folder / "names.csv", [[name] for name in names])
        write_csv(folder / PARTS_FILE, rows["parts"], header=PARTS_COLUMNS)
        record = {"preset": "cars", "classes": names, "counts": counts, "seed": seed,
                  "width": WIDTH, "height": HEIGHT, "quality": QUALITY}
        (folder / "synth.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


def _counts(classes: int, per_class: int | None,
            test_per_class: int | None) -> dict[str, list[int]]:
    if not 2 <= classes <= MAX_CLASSES:
        raise UserError(f"classes is {classes}, but must be 2..{MAX_CLASSES} for the cars preset")
    if per_class is not None and per_class < 1:
        raise UserError(f"per_class is {per_class}, but must be >= 1")
    if test_per_class is not None and test_per_class < 0:
        raise UserError(f"test_per_class is {test_per_class}, but must be >= 0")
    given = {"train": per_class, "test": test_per_class}
    return {split: [count] * classes if count is not None else official_counts(split)[:classes]
            for split, count in given.items()}


def _draw_task(task: tuple[str, list[str], int, list[tuple[str, int, int, int]]]) -> dict:
    """Draw and save some images; their annotation rows (per split) and part rows."""
    folder, names, seed, jobs = task
    rows: dict[str, list] = {"train": [], "test": [], "parts": []}
    for split, label, index, number in jobs:
        rng = np.random.default_rng([seed, SPLIT_IDS[split], label, index])
        drawn = draw_car(list(SHAPES)[label % len(SHAPES)], size=(WIDTH, HEIGHT),
                         cues=("headlight",), coloured_parts=True, rng=rng,
                         part_colour=_hue(label // len(SHAPES)), supersample=1, noise=0)
        filename = f"{number:05d}.jpg"
        relative = f"{split}/{folder_name(names[label])}/{filename}"
        _with_grain(drawn.image, rng, seed).save(Path(folder) / relative, quality=QUALITY)
        rows[split].append([filename, *drawn.car_box, label + 1])
        rows["parts"].extend([relative, part, *box] for part, box in drawn.parts)
    return rows


def _hue(index: int) -> tuple[int, int, int]:
    """A bright colour, `index` of HUES around the colour wheel."""
    r, g, b = colorsys.hsv_to_rgb(index / HUES, 1.0, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@cache
def _grain_image(seed: int) -> Image.Image:
    """One noise image larger than a picture, uniform in [0, 2 * GRAIN], made once per process."""
    rng = np.random.default_rng([seed, 7])
    noise = rng.integers(0, 2 * GRAIN + 1, (HEIGHT * 3 // 2, WIDTH * 3 // 2, 3), dtype=np.uint8)
    return Image.fromarray(noise)


def _with_grain(image: Image.Image, rng: np.random.Generator, seed: int) -> Image.Image:
    grain = _grain_image(seed)
    x = int(rng.integers(0, grain.width - WIDTH + 1))
    y = int(rng.integers(0, grain.height - HEIGHT + 1))
    # (image + grain) / 1 - GRAIN, clipped to 0..255, per channel
    return ImageChops.add(image, grain.crop((x, y, x + WIDTH, y + HEIGHT)), 1.0, -GRAIN)
