"""The class-folder + CSV layout of Stanford Cars (as shared on Kaggle, "by classes folder").

    root/anno_train.csv, anno_test.csv    no header: filename,x1,y1,x2,y2,class (1-based)
    root/names.csv                         one class name per line, line i = class i
    root/[car_data/[car_data/]]train/<class folder>/<filename>, .../test/<class folder>/...

A class name may contain "/" ("Ram C/V Cargo Van Minivan 2012"), which no folder name can, so
its folder spells it with "-". Every image is matched to its annotation row by split, class
folder and filename; annotated images that are absent, and images with no row, are errors
that name them.
"""

from __future__ import annotations

import csv
from pathlib import Path

from carsweep.data.manifest import BOX_COLUMNS
from carsweep.data.sources import (
    SourceIndex,
    is_image,
    list_images,
    make_index,
    register_layout,
    relative,
)
from carsweep.errors import UserError

NAMES_FILE = "names.csv"
ANNOTATION_FILES = {"train": "anno_train.csv", "test": "anno_test.csv"}
IMAGE_PARENTS = (".", "car_data", "car_data/car_data")  # where Kaggle's archive puts train/


def folder_name(class_name: str) -> str:
    """The class folder of a class name: "/" cannot appear in a folder name, so it is "-"."""
    return class_name.replace("/", "-")


def image_parent(root: Path) -> Path | None:
    """The folder holding train/ and test/: root itself or Kaggle's car_data[/car_data]."""
    for candidate in IMAGE_PARENTS:
        folder = root / candidate
        if any((folder / split).is_dir() for split in ANNOTATION_FILES):
            return folder
    return None


def _detect_class_csv(root: Path) -> bool:
    has_annotations = any((root / name).is_file() for name in ANNOTATION_FILES.values())
    return has_annotations and image_parent(root) is not None


@register_layout("class-csv", "train/<class>/, test/<class>/ with anno_train.csv, "
                 "anno_test.csv, names.csv", _detect_class_csv)
def read_class_csv(root: Path) -> SourceIndex:
    classes = read_names(root / NAMES_FILE)
    parent = image_parent(root)
    if parent is None:
        raise UserError(f"{root}: no train/ or test/ image folder found (looked in "
                        f"{', '.join(IMAGE_PARENTS)})")
    rows: list[dict] = []
    for split, annotation_name in ANNOTATION_FILES.items():
        annotations = root / annotation_name
        split_folder = parent / split
        if not annotations.is_file():
            if split_folder.is_dir():
                raise UserError(f"{annotations}: annotation file not found; expected one row "
                                f"per image in {split_folder}")
            continue
        rows += _match_split(root, split_folder, annotations, split, classes)
    return make_index(root, "class-csv", classes, rows)


def read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: class names file not found; expected one class name per line")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        names = [",".join(row).strip() for row in csv.reader(handle) if row]
    if not names or any(not name for name in names):
        raise UserError(f"{path}: expected one non-empty class name per line")
    return names


def _match_split(root: Path, split_folder: Path, annotations: Path, split: str,
                 classes: list[str]) -> list[dict]:
    """One row per annotation, each matched to its file; unmatched files are an error."""
    rows, absent = [], []
    for filename, box, label in _read_annotations(annotations, len(classes)):
        path = split_folder / folder_name(classes[label]) / filename
        if not is_image(path):
            absent.append(relative(path, root))
            continue
        rows.append({"path": relative(path, root), "class_name": classes[label],
                     "source_split": split, **dict(zip(BOX_COLUMNS, box, strict=True))})
    if absent:
        raise UserError(f"{annotations}: {len(absent)} annotated image(s) not found: "
                        f"{_first(absent)}")
    matched = {row["path"] for row in rows}
    unmatched = [relative(p, root) for p in list_images(split_folder)
                 if relative(p, root) not in matched] if split_folder.is_dir() else []
    if unmatched:
        raise UserError(f"{split_folder}: {len(unmatched)} image(s) have no row in "
                        f"{annotations.name} (or sit in another class's folder): "
                        f"{_first(unmatched)}")
    return rows


def _read_annotations(path: Path, num_classes: int):
    """Yield (filename, (x1, y1, x2, y2), label) per row; a malformed row is a UserError."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or (line == 1 and _is_header(row)):
                continue
            try:
                filename, *numbers = (field.strip() for field in row)
                x1, y1, x2, y2, number = (int(float(v)) for v in numbers)
            except ValueError:
                raise UserError(f"{path}: line {line} is {','.join(row)!r}; expected "
                                "filename,x1,y1,x2,y2,class with numbers") from None
            if not 1 <= number <= num_classes:
                raise UserError(f"{path}: line {line} has class {number}, but {NAMES_FILE} "
                                f"names classes 1..{num_classes}")
            yield filename, (x1, y1, x2, y2), number - 1


def _is_header(row: list[str]) -> bool:
    """A first row like `Image,x1,y1,x2,y2,Class`: some copies of the CSVs carry one."""
    return len(row) == 6 and not any(field.strip().lstrip("-").isdigit() for field in row[1:])


def _first(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f" ... ({len(names) - count} more)"
                                       if len(names) > count else "")
