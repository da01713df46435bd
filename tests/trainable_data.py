"""A tiny prepared dataset for the trainable's tests, written per carsweep/data/manifest.py.

Each class is an easy, known signal: the image's dominant colour (plus noise and a random
rectangle), so a few epochs from scratch on the CPU must learn it. Boxes mark the rectangle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from carsweep.data.manifest import MANIFEST_COLUMNS


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Autouse where imported: one torch thread, so tiny models train the same everywhere and
    do not fight the other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 220, 40)]


def make_tiny_dataset(folder: Path, *, per_split: dict[str, int] | None = None,
                      num_classes: int = 4, size: int = 40, seed: int = 0) -> Path:
    """Write images + manifest.csv + classes.json + dataset.json under `folder`; returns it.
    Past 4 classes the colours repeat (for tests of order and counts, not of content)."""
    per_split = per_split or {"train": 16, "val": 8, "test": 8}  # images per class
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    rows = []
    for split, count in per_split.items():
        for label in range(num_classes):
            for index in range(count):
                relative = f"class{label}/{split}_{index}.png"
                box = _draw(folder / "images" / relative, COLOURS[label % len(COLOURS)], size, rng)
                sha1 = hashlib.sha1((folder / "images" / relative).read_bytes()).hexdigest()
                rows.append({
                    "path": relative, "label": label, "class_name": f"class {label}",
                    "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
                    "source_split": split, "split": split, "sha1": sha1,
                    "width": size + 8, "height": size,
                })
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(folder / "manifest.csv", index=False)
    classes = [f"class {label}" for label in range(num_classes)]
    (folder / "classes.json").write_text(json.dumps(classes))
    info = {"root": "images", "layout": "imagefolder", "split_scheme": "official", "seed": seed}
    (folder / "dataset.json").write_text(json.dumps(info))
    return folder


def _draw(path: Path, colour: tuple[int, int, int], size: int,
          rng: np.random.Generator) -> tuple[int, int, int, int]:
    width, height = size + 8, size
    pixels = rng.normal(0, 25, (height, width, 3)) + np.array(colour)
    x1, y1 = rng.integers(0, width // 2), rng.integers(0, height // 2)
    x2, y2 = x1 + width // 3, y1 + height // 3
    pixels[y1:y2, x1:x2] = rng.integers(0, 256, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return int(x1), int(y1), int(x2), int(y2)
