"""Tiny fake dataset sources in each layout `prepare` reads, for the data tests.

Every image is a small solid-colour picture with a little noise, so each file's bytes differ.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

SLASH_CLASS = "Ram C/V Cargo Van Minivan 2012"
CLASSES = ["AM General Hummer SUV 2000", SLASH_CLASS, "Volkswagen Beetle Hatchback 2012"]


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, 3) + rng.normal(0, 20, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)


def annotations_of(per_class: int, classes: list[str] = CLASSES) -> list[tuple]:
    """[(filename, x1, y1, x2, y2, class 1-based)], numbered across the split like 00001.jpg."""
    rows = []
    for label in range(len(classes)):
        for _ in range(per_class):
            rows.append((f"{len(rows) + 1:05d}.jpg", 2 + label, 3, 30 + label, 35, label + 1))
    return rows


def write_devkit(root: Path, *, train: int = 4, test: int = 2,
                 classes: list[str] = CLASSES) -> Path:
    """root/stanford_cars/{cars_train,cars_test,devkit/*.mat,cars_test_annos_withlabels.mat}."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(classes, dtype=object)})
    files = {"train": (base / "devkit" / "cars_train_annos.mat", "cars_train", train),
             "test": (base / "cars_test_annos_withlabels.mat", "cars_test", test)}
    for offset, (mat, folder, count) in enumerate(files.values()):
        rows = annotations_of(count, classes)
        rows = rows[::-1]  # annotation order need not follow file names
        for index, row in enumerate(rows):
            write_image(base / folder / row[0], seed=1000 * offset + index)
        dtype = [(name, "O") for name in
                 ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
        records = np.array([(*row[1:6], row[0]) for row in rows], dtype=dtype)
        scipy.io.savemat(mat, {"annotations": records})
    return root


def write_class_csv(root: Path, *, train: int = 4, test: int = 2, nested: str = "",
                    classes: list[str] = CLASSES) -> Path:
    """Kaggle's layout: anno_*.csv + names.csv at root, images under [nested/]split/<class>/."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "names.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([name] for name in classes)
    for offset, (split, count) in enumerate((("train", train), ("test", test))):
        rows = annotations_of(count, classes)
        with (root / f"anno_{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        for index, (filename, *_, number) in enumerate(rows):
            folder = classes[number - 1].replace("/", "-")
            write_image(root / nested / split / folder / filename, seed=1000 * offset + index)
    return root


def write_imagefolder(root: Path, *, per_class: int = 3, splits: tuple[str, ...] = (),
                      classes: tuple[str, ...] = ("cat", "dog", "fox")) -> Path:
    """root/<class>/*.png, or root/<split>/<class>/*.png for each of `splits`."""
    seed = 0
    for split in splits or ("",):
        for name in classes:
            for index in range(per_class):
                seed += 1
                write_image(root / split / name / f"img{index}.png", seed=seed)
    return root
