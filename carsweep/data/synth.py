"""Synthetic car-like pictures whose class is decided by one known part: the demo and test data.

Each picture shows a cartoon car in side view (body, cabin with windows, two wheels, a
headlight at the front and a tail light at the back) on a varied background, at a random
position, scale, colour and facing. Everything is random except the *cue*: the part whose
shape (and, by default, colour) is the class. With `cues=("headlight",)` the headlight is a
round / square / triangle / bar ... lamp; with `cues=("headlight", "wheel")` the same shape
is also drawn as both wheels' hubs, so two parts decide the class at once (for training that
must not rely on one detail). Because the deciding part is known, `parts.csv` gives its box
per image, and a test can check that Grad-CAM points at it.

The output mimics the class-folder layout of Stanford Cars, so `carsweep prepare` reads it as
the `class-csv` layout with car boxes (or, with `layout="imagefolder"`, as plain folders):

    OUT/train/<class>/00001.png ...       train images, one folder per class
    OUT/test/<class>/00001.png ...        test images
    OUT/anno_train.csv, anno_test.csv     filename,x1,y1,x2,y2,class (1-based), no header;
                                          the box is the whole car's
    OUT/names.csv                         class names, one per line, line i = class i
    OUT/parts.csv                         path,part,x1,y1,x2,y2: the box of every cue part
                                          (one row per instance: a "wheel" cue has two rows)
    OUT/synth.json                        the parameters, for the record

Deterministic for a seed: image i of class c in split s depends only on (seed, s, c, i).
The Stanford-Cars-shaped source (196 classes of 700x480 JPEGs) is synth_cars.py.
"""

from __future__ import annotations

import colorsys
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from carsweep.data.folders import building_folder, check_replaceable
from carsweep.data.manifest import PARTS_COLUMNS, PARTS_FILE
from carsweep.data.synth_shapes import SHAPES, Box, Colour, draw_round
from carsweep.errors import UserError

SUPERSAMPLE = 2  # draw at 2x and downsample, so small parts keep clean anti-aliased edges
SPLIT_IDS = {"train": 0, "test": 1}
CUES = ("headlight", "wheel")
LAYOUTS = ("class-csv", "imagefolder")
SAVE_OPTIONS = {"png": {}, "jpg": {"quality": 92}}
MAX_SIZE = 2048  # drawn whole in memory: 100,000 px met the OOM killer, not an error
NEUTRAL_LAMP: Colour = (255, 250, 205)  # every lamp's colour when colour is not part of the cue
NEUTRAL_HUB: Colour = (170, 170, 175)


@dataclass(frozen=True)
class SynthImage:
    """One drawn picture, the whole car's box and the boxes of its cue parts (image pixels)."""

    image: Image.Image
    car_box: tuple[int, int, int, int]
    parts: list[tuple[str, tuple[int, int, int, int]]]

def make_synthetic_dataset(
    out: Path, *, classes: int = 4, per_class: int = 60, test_per_class: int | None = None,
    size: int = 96, seed: int = 0, cues: tuple[str, ...] = ("headlight",),
    coloured_parts: bool = True, layout: str = "class-csv", image_format: str = "png",
    force: bool = False,
) -> Path:
    """Draw the dataset into a new `out`, written whole or not at all; returns `out`.

    An existing `out` is replaced if it is empty or an earlier synthetic dataset (it holds
    synth.json), or with `force`; any other non-empty folder is refused.

    `per_class` train and `test_per_class` (default a third of it, at least 1) test images per
    class. `coloured_parts` gives each class's part its own bright colour as well as its
    shape, which makes the data learnable in a couple of epochs from scratch even at 32 px;
    without it only the shape tells the classes apart.
    """
    _check_arguments(classes, per_class, test_per_class, size, cues, layout, image_format)
    out = Path(out)
    check_replaceable(out, force=force or (out / "synth.json").is_file(), what="the drawing",
                      flag="OUT")
    with building_folder(out) as folder:
        _draw_dataset(folder, classes=classes, per_class=per_class, size=size, seed=seed,
                      test_per_class=test_per_class, cues=cues, coloured_parts=coloured_parts,
                      layout=layout, image_format=image_format)
    return out


def _draw_dataset(out: Path, *, classes: int, per_class: int, test_per_class: int | None,
                  size: int, seed: int, cues: tuple[str, ...], coloured_parts: bool,
                  layout: str, image_format: str) -> None:
    test_per_class = max(1, per_class // 3) if test_per_class is None else test_per_class
    names = list(SHAPES)[:classes]
    parts_rows: list[list] = []
    for split, count in (("train", per_class), ("test", test_per_class)):
        annotations = []
        for label, name in enumerate(names):
            (out / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                number = label * count + index + 1  # unique within the split, like 00001.jpg
                filename = f"{number:05d}.{image_format}"
                drawn = draw_car(name, size=size, cues=cues, coloured_parts=coloured_parts,
                                 rng=np.random.default_rng([seed, SPLIT_IDS[split], label, index]))
                relative = f"{split}/{name}/{filename}"
                drawn.image.save(out / relative, **SAVE_OPTIONS[image_format])
                annotations.append([filename, *drawn.car_box, label + 1])
                parts_rows.extend([relative, part, *box] for part, box in drawn.parts)
        if layout == "class-csv":
            write_csv(out / f"anno_{split}.csv", annotations)
    if layout == "class-csv":
        write_csv(out / "names.csv", [[name] for name in names])
    write_csv(out / PARTS_FILE, parts_rows, header=PARTS_COLUMNS)
    record = {"classes": names, "per_class": per_class, "test_per_class": test_per_class,
              "size": size, "seed": seed, "cues": list(cues), "coloured_parts": coloured_parts,
              "layout": layout, "image_format": image_format}
    (out / "synth.json").write_text(json.dumps(record, indent=2) + "\n")


def draw_car(shape: str, *, size: int | tuple[int, int], cues: tuple[str, ...],
             coloured_parts: bool, rng: np.random.Generator, part_colour: Colour | None = None,
             supersample: int = SUPERSAMPLE, noise: float = 6.0) -> SynthImage:
    """One picture of a car whose `cues` parts have the class `shape`; all else is random.

    `size` is the side of a square picture or (width, height); `part_colour` replaces the
    shape's own class colour; `noise` is the standard deviation of the Gaussian grain added
    last (0: none). synth_cars.py draws Stanford-Cars-shaped pictures with it."""
    width, height = (size, size) if isinstance(size, int) else size
    canvas_w, canvas_h = width * supersample, height * supersample
    image = _background(canvas_w, canvas_h, rng)
    draw = ImageDraw.Draw(image)
    drawer, class_colour = SHAPES[shape]
    colour = (part_colour or class_colour) if coloured_parts else None
    line = max(1, round(min(canvas_w, canvas_h) / 80))

    # The car is 0.69 lengths tall: on a wide canvas its height, not the width, limits it.
    length = rng.uniform(0.62, 0.92) * min(canvas_w, canvas_h / 0.75)
    body_h, cabin_h, wheel_r = 0.34 * length, 0.22 * length, 0.13 * length
    left = rng.uniform(0.02, 0.98 - length / canvas_w) * canvas_w
    bottom_room = canvas_h - (cabin_h + body_h + wheel_r)
    top = rng.uniform(0.02 * canvas_h, bottom_room - 0.02 * canvas_h) + cabin_h
    facing_right = bool(rng.integers(2))

    def x(u: float) -> float:  # car-local position 0..1 (rear to front) -> canvas x
        return left + (u if facing_right else 1 - u) * length

    def span(u1: float, u2: float) -> tuple[float, float]:
        return min(x(u1), x(u2)), max(x(u1), x(u2))

    body_colour = _muted_colour(rng)
    bx1, bx2 = span(0.0, 1.0)
    draw.rounded_rectangle((bx1, top, bx2, top + body_h), radius=body_h * 0.25, fill=body_colour,
                           outline=(0, 0, 0), width=line)
    cabin = [(x(0.18), top), (x(0.30), top - cabin_h), (x(0.66), top - cabin_h), (x(0.80), top)]
    draw.polygon(cabin, fill=body_colour, outline=(0, 0, 0), width=line)
    glass = tuple(int(c) for c in rng.integers(120, 200, 3))
    inset = cabin_h * 0.18
    for u1, u2 in ((0.22, 0.47), (0.50, 0.75)):
        wx1, wx2 = span(u1 + 0.03, u2 - 0.03)
        draw.rectangle((wx1, top - cabin_h + inset, wx2, top - inset * 0.5), fill=glass)
    tx1, tx2 = span(0.0, 0.05)
    draw.rectangle((tx1, top + body_h * 0.2, tx2, top + body_h * 0.45), fill=(200, 20, 20))

    parts: list[tuple[str, Box]] = []
    lamp = 0.17 * length  # large on purpose: the cue must survive a resize to 32 px
    lamp_u = 1.0 - 0.03 - lamp / length
    lx1, lx2 = span(lamp_u, lamp_u + lamp / length)
    lamp_box = (lx1, top + 0.03 * length, lx2, top + 0.03 * length + lamp)  # above the wheel
    if "headlight" in cues:
        parts.append(("headlight", drawer(draw, lamp_box, colour or NEUTRAL_LAMP, line)))
    else:
        draw_round(draw, lamp_box, NEUTRAL_LAMP, line)
    for u in (0.2, 0.74):
        cx, cy = x(u), top + body_h
        tyre = (cx - wheel_r, cy - wheel_r, cx + wheel_r, cy + wheel_r)
        draw.ellipse(tyre, fill=(25, 25, 25))
        hub = (cx - wheel_r * 0.6, cy - wheel_r * 0.6, cx + wheel_r * 0.6, cy + wheel_r * 0.6)
        if "wheel" in cues:
            drawer(draw, hub, colour or NEUTRAL_HUB, line)
            parts.append(("wheel", tyre))
        else:
            draw.ellipse(hub, fill=NEUTRAL_HUB)

    car = (bx1, top - cabin_h, bx2, top + body_h + wheel_r)
    if supersample > 1:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return SynthImage(
        image=_add_noise(image, rng, noise) if noise else image,
        car_box=_to_pixels(car, width, height, supersample),
        parts=[(name, _to_pixels(box, width, height, supersample)) for name, box in parts],
    )


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Sky over ground at a random horizon, with a few muted blocks (buildings, trees)."""
    image = Image.new("RGB", (width, height), _muted_colour(rng, light=True))
    draw = ImageDraw.Draw(image)
    horizon = rng.uniform(0.45, 0.8) * height
    for _ in range(int(rng.integers(0, 4))):
        x1 = rng.uniform(0, width)
        w, h = rng.uniform(0.1, 0.35) * width, rng.uniform(0.1, 0.4) * height
        draw.rectangle((x1, horizon - h, x1 + w, horizon), fill=_muted_colour(rng))
    draw.rectangle((0, horizon, width, height), fill=_muted_colour(rng))
    return image


def _muted_colour(rng: np.random.Generator, *, light: bool = False) -> Colour:
    """A low-saturation colour, so no body or background competes with the bright cue colours."""
    value = rng.uniform(0.55, 0.9) if light else rng.uniform(0.2, 0.7)
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.35), value)
    return int(r * 255), int(g * 255), int(b * 255)


def _add_noise(image: Image.Image, rng: np.random.Generator, std: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, std, (*image.size[::-1], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _to_pixels(box: Box, width: int, height: int, supersample: int) -> tuple[int, int, int, int]:
    """A canvas box -> integer pixel box of the final image, clamped to it (x2, y2 inclusive)."""
    x1, y1, x2, y2 = (v / supersample for v in box)

    def clamp(v: float, side: int) -> int:
        return int(min(max(v, 0), side - 1))

    return (clamp(math.floor(x1), width), clamp(math.floor(y1), height),
            clamp(math.ceil(x2), width), clamp(math.ceil(y2), height))


def write_csv(path: Path, rows: list[list], header: list[str] | None = None) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _check_arguments(classes: int, per_class: int, test_per_class: int | None, size: int,
                     cues: tuple[str, ...], layout: str, image_format: str) -> None:
    if not 2 <= classes <= len(SHAPES):
        raise UserError(f"classes is {classes}, but must be 2..{len(SHAPES)} "
                        f"(one per part shape: {', '.join(SHAPES)})")
    if per_class < 1:
        raise UserError(f"per_class is {per_class}, but must be >= 1")
    if test_per_class is not None and test_per_class < 0:
        raise UserError(f"test_per_class is {test_per_class}, but must be >= 0")
    if not 16 <= size <= MAX_SIZE:
        raise UserError(f"size is {size} px, but must be 16..{MAX_SIZE} (each picture is drawn "
                        "whole in memory)")
    unknown = [cue for cue in cues if cue not in CUES]
    if not cues or unknown or len(set(cues)) != len(cues):
        raise UserError(f"cues {list(cues)} are invalid; choose one or both of {list(CUES)}")
    if layout not in LAYOUTS:
        raise UserError(f"layout {layout!r} is unknown; valid: {list(LAYOUTS)}")
    if image_format not in SAVE_OPTIONS:
        raise UserError(f"image_format {image_format!r} is unknown; valid: {list(SAVE_OPTIONS)}")
