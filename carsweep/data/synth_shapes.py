"""The part shapes of the synthetic dataset: one registry, class i is the i-th entry.

Each drawer paints its shape into a box with a fill colour and a black outline and returns
the box the shape really covers (the bar is flatter than its box).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import ImageDraw

Box = tuple[float, float, float, float]
Colour = tuple[int, int, int]


def draw_round(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    draw.ellipse(box, fill=fill, outline=(0, 0, 0), width=line)
    return box


def _square(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    draw.rectangle(box, fill=fill, outline=(0, 0, 0), width=line)
    return box


def _triangle(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    x1, y1, x2, y2 = box
    draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill, outline=(0, 0, 0),
                 width=line)
    return box


def _bar(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    x1, y1, x2, y2 = box
    middle, half = (y1 + y2) / 2, (y2 - y1) * 0.28  # thick enough to keep colour at 32 px
    bar = (x1, middle - half, x2, middle + half)
    draw.rectangle(bar, fill=fill, outline=(0, 0, 0), width=line)
    return bar


def _diamond(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill, outline=(0, 0, 0),
                 width=line)
    return box


def _ring(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    x1, y1, x2, y2 = box
    draw.ellipse(box, fill=fill, outline=(0, 0, 0), width=line)
    inset = (x2 - x1) * 0.3
    draw.ellipse((x1 + inset, y1 + inset, x2 - inset, y2 - inset), fill=(20, 20, 20))
    return box


def _cross(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    x1, y1, x2, y2 = box
    w, h = (x2 - x1) / 3, (y2 - y1) / 3
    points = [(x1 + w, y1), (x1 + 2 * w, y1), (x1 + 2 * w, y1 + h), (x2, y1 + h), (x2, y1 + 2 * h),
              (x1 + 2 * w, y1 + 2 * h), (x1 + 2 * w, y2), (x1 + w, y2), (x1 + w, y1 + 2 * h),
              (x1, y1 + 2 * h), (x1, y1 + h), (x1 + w, y1 + h)]
    draw.polygon(points, fill=fill, outline=(0, 0, 0), width=line)
    return box


def _star(draw: ImageDraw.ImageDraw, box: Box, fill: Colour, line: int) -> Box:
    x1, y1, x2, y2 = box
    cx, cy, radius = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    points = [(cx + r * math.sin(k * math.pi / 5), cy - r * math.cos(k * math.pi / 5))
              for k, r in ((k, radius if k % 2 == 0 else radius * 0.6) for k in range(10))]
    draw.polygon(points, fill=fill, outline=(0, 0, 0), width=line)
    return box


ShapeDrawer = Callable[[ImageDraw.ImageDraw, Box, Colour, int], Box]
SHAPES: dict[str, tuple[ShapeDrawer, Colour]] = {  # name -> (drawer, class colour)
    "round": (draw_round, (255, 225, 0)),
    "square": (_square, (0, 225, 255)),
    "triangle": (_triangle, (255, 0, 200)),
    "bar": (_bar, (120, 255, 40)),
    "diamond": (_diamond, (255, 130, 0)),
    "ring": (_ring, (80, 120, 255)),
    "cross": (_cross, (0, 255, 160)),
    "star": (_star, (255, 110, 150)),
}
