"""Dataset sources -> one table of images: the registry of layouts `prepare` can read.

A layout knows how to recognise a source folder (`detect`) and how to list its images
(`read`). Reading gives a `SourceIndex`: the class names in label order and one row per image
with columns SOURCE_COLUMNS (path relative to the source root, POSIX; class name; box or NaN;
the source's own split or ""). Adding a layout = one `@register_layout` function pair here or
in its own module, imported at the bottom of this file, and one test.

`--layout auto` tries the layouts in registration order (most specific first) and takes the
first whose `detect` says yes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from carsweep.data.manifest import BOX_COLUMNS
from carsweep.errors import UserError

SOURCE_COLUMNS = ["path", "class_name", *BOX_COLUMNS, "source_split"]
# The extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SOURCE_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceIndex:
    """What a layout read: class names (index = label) and one row per image."""

    root: Path
    layout: str
    classes: list[str]
    images: pd.DataFrame  # columns SOURCE_COLUMNS


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], SourceIndex]


LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, description: str, detect: Callable[[Path], bool]):
    """Decorator registering `read(root) -> SourceIndex` as layout `name`."""
    def decorate(read: Callable[[Path], SourceIndex]) -> Callable[[Path], SourceIndex]:
        LAYOUTS[name] = Layout(name, description, detect, read)
        return read
    return decorate


def layout_names() -> list[str]:
    return list(LAYOUTS)


def read_source(root: Path, layout: str = "auto") -> SourceIndex:
    """Index the images of `root` in `layout` ("auto" detects it); problems are UserErrors."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such source folder; expected a dataset folder in one of "
                        f"the layouts {layout_names()}")
    name = detect_layout(root) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise UserError(f"--layout {layout!r} is unknown; valid: {['auto', *layout_names()]}")
    index = LAYOUTS[name].read(root.resolve())
    if index.images.empty:
        raise UserError(f"{root}: no images found in the {name} layout "
                        f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
    return index


def detect_layout(root: Path) -> str:
    for layout in LAYOUTS.values():
        if layout.detect(root):
            return layout.name
    expected = "; ".join(f"{layout.name}: {layout.description}" for layout in LAYOUTS.values())
    raise UserError(f"{root}: unrecognised dataset layout; expected one of {expected}")


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` and below, sorted (ImageFolder also walks sub-folders;
    not symlinked ones, which may loop). A folder that cannot be listed is an error naming it:
    `rglob` skipped it, and a class folder without read permission read as one without images."""
    found = []
    for parent, _, files in os.walk(folder, onerror=_refuse_unlisted):
        found += [path for path in map(Path(parent).joinpath, files) if is_image(path)]
    return sorted(found)


def _refuse_unlisted(error: OSError) -> None:
    raise UserError(f"{error.filename}: cannot list the folder ({error.strerror}); fix its "
                    "permissions or remove it")


def make_index(root: Path, layout: str, classes: list[str], rows: list[dict]) -> SourceIndex:
    images = pd.DataFrame(rows, columns=SOURCE_COLUMNS)
    for column in BOX_COLUMNS:
        images[column] = pd.to_numeric(images[column], errors="coerce").astype(float)
    return SourceIndex(root=root, layout=layout, classes=classes, images=images)


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --- plain ImageFolder: <root>/<class>/... or <root>/{train,val,test}/<class>/... ----------

def _split_folders(root: Path) -> list[Path]:
    return [root / split for split in SOURCE_SPLITS if (root / split).is_dir()]


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _detect_imagefolder(root: Path) -> bool:
    parents = _split_folders(root) or [root]
    return any(_class_folders(parent) for parent in parents)


@register_layout("imagefolder", "<class>/*.jpg folders, optionally under train/ and test/",
                 _detect_imagefolder)
def read_imagefolder(root: Path) -> SourceIndex:
    """Class = folder name; classes sorted by name, as torchvision's ImageFolder does."""
    splits = _split_folders(root)
    parents = [(split, split.name) for split in splits] or [(root, "")]
    folders = [(folder, split) for parent, split in parents for folder in _class_folders(parent)]
    rows = []
    for folder, split in folders:
        images = list_images(folder)
        if not images:
            raise UserError(f"{folder}: class folder has no images "
                            f"(extensions {', '.join(IMAGE_EXTENSIONS)}); remove it or add some")
        rows += [{"path": relative(p, root), "class_name": folder.name, "source_split": split}
                 for p in images]
    classes = sorted({folder.name for folder, _ in folders})
    return make_index(root, "imagefolder", classes, rows)


# Layouts registered in their own modules are imported last. Detection order: the most
# specific first (devkit, then class-csv), the catch-all ImageFolder last.
DETECTION_ORDER = ("devkit", "class-csv", "imagefolder")


def _register_specific_layouts() -> None:
    import carsweep.data.class_csv  # noqa: F401  (each registers its layout on import)
    import carsweep.data.devkit  # noqa: F401

    ordered = sorted(LAYOUTS.values(), key=lambda layout: (
        DETECTION_ORDER.index(layout.name) if layout.name in DETECTION_ORDER else 1.5))
    LAYOUTS.clear()
    LAYOUTS.update((layout.name, layout) for layout in ordered)


_register_specific_layouts()
