"""The Stanford Cars devkit layout, read exactly as torchvision.datasets.StanfordCars reads it.

    [root/]stanford_cars/
        cars_train/00001.jpg ...            train images
        cars_test/00001.jpg ...             test images
        devkit/cars_meta.mat                class_names: the 196 names, index = label
        devkit/cars_train_annos.mat         annotations: bbox_x1..bbox_y2, class (1-based), fname
        cars_test_annos_withlabels.mat      the same for the test images

Labels are `class - 1` and image paths `cars_<split>/<fname>`, as torchvision does; the boxes
(which torchvision ignores) are kept. SOURCE may be `stanford_cars` itself or its parent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carsweep.data.manifest import BOX_COLUMNS
from carsweep.data.sources import SourceIndex, make_index, register_layout
from carsweep.errors import UserError

BASE_FOLDER = "stanford_cars"
META = Path("devkit") / "cars_meta.mat"
ANNOTATIONS = {  # split -> (annotation file, image folder), relative to the base folder
    "train": (Path("devkit") / "cars_train_annos.mat", "cars_train"),
    "test": (Path("cars_test_annos_withlabels.mat"), "cars_test"),
}
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def base_folder(root: Path) -> Path:
    return root / BASE_FOLDER if (root / BASE_FOLDER).is_dir() else root


def _detect_devkit(root: Path) -> bool:
    return (base_folder(root) / META).is_file()


@register_layout("devkit", "stanford_cars/ with cars_train/, cars_test/, devkit/*.mat "
                 "(torchvision StanfordCars)", _detect_devkit)
def read_devkit(root: Path) -> SourceIndex:
    base = base_folder(root)
    classes = [str(name) for name in np.atleast_1d(_load_mat(base / META, "class_names"))]
    rows: list[dict] = []
    for split, (annotation_file, image_folder) in ANNOTATIONS.items():
        path = base / annotation_file
        if not path.is_file():
            if split == "test" and not (base / image_folder).exists():
                continue  # a train-only devkit: allowed, the split scheme decides what to do
            raise UserError(f"{path}: annotation file not found; the devkit layout needs it "
                            f"for the images in {base / image_folder}")
        rows += _read_annotations(base, path, split, image_folder, classes)
    return make_index(base, "devkit", classes, rows)


def _read_annotations(base: Path, path: Path, split: str, image_folder: str,
                      classes: list[str]) -> list[dict]:
    annotations = np.atleast_1d(_load_mat(path, "annotations"))
    fields = annotations.dtype.names or ()
    missing = [f for f in ("fname", "class", *BOX_FIELDS) if f not in fields]
    if missing:
        raise UserError(f"{path}: annotations lack the field(s) {missing}; expected fname, "
                        f"class and {', '.join(BOX_FIELDS)}")
    rows, absent = [], []
    for annotation in annotations:
        label = int(annotation["class"]) - 1  # the devkit's classes start at 1
        if not 0 <= label < len(classes):
            raise UserError(f"{path}: image {annotation['fname']} has class {label + 1}, but "
                            f"cars_meta.mat names classes 1..{len(classes)}")
        relative = f"{image_folder}/{annotation['fname']}"
        if not (base / relative).is_file():
            absent.append(relative)
        rows.append({"path": relative, "class_name": classes[label], "source_split": split,
                     **{key: float(annotation[field]) for key, field in
                        zip(BOX_COLUMNS, BOX_FIELDS, strict=True)}})
    if absent:
        raise UserError(f"{path}: {len(absent)} annotated image(s) not found under {base}: "
                        f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}")
    return rows


def _load_mat(path: Path, key: str) -> np.ndarray:
    """`loadmat(path, squeeze_me=True)[key]` (as torchvision loads it), or a UserError.

    scipy reports a damaged file in many ways (an IndexError for a short one), hence the list.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise UserError(f"{path}: file not found; the devkit layout needs it")
    try:
        content = loadmat(path, squeeze_me=True)
    except (MatReadError, ValueError, OSError, TypeError, IndexError, EOFError) as error:
        raise UserError(f"{path}: not a readable MATLAB .mat file ({error})") from None
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise UserError(f"{path}: no variable `{key}` in the .mat file (found {found})")
    return content[key]
