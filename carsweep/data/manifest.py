"""The prepared dataset on disk: the contract between `prepare` and everything that reads data.

A prepared dataset is a folder holding:

    manifest.csv   one row per image, columns MANIFEST_COLUMNS:
                   path         image path relative to `root` (POSIX separators)
                   label        class index, 0..n_classes-1, into classes.json
                   class_name   the class's human name (may contain "/")
                   x1,y1,x2,y2  object box in pixels of the original image, empty if unknown
                   source_split the split the source gave ("train", "test") or "" if none
                   split        the assigned split: "train", "val" or "test"
                   sha1         hash of the file's bytes (audit duplicates, cache staleness)
                   width,height size of the original image
    classes.json   the class names, index = label
    dataset.json   root (absolute path of the images, or their bucket URI; not copied), source,
                   layout,
                   split_scheme, seed, val_fraction, num_classes, counts per split,
                   parts_file (below, or null), carsweep_version
    audit.json     what `prepare` found: class counts per split, tiny images, duplicates,
                   unreadable files left out
    parts.csv      only for sources that have one (the synthetic dataset): the box of each
                   class-deciding part, one row per part instance, columns PARTS_COLUMNS:
                   path (as in manifest.csv), part ("headlight", "wheel"), x1,y1,x2,y2 in
                   pixels of the original image. Read it with `PreparedDataset.parts()`;
                   it lets analysis check that Grad-CAM points at the deciding part.

The folder may be in a bucket (`load_dataset("s3://BUCKET/data")`, carsweep/storage.py): its
files are read from there. A `root` in a bucket (a source prepared from one) is a BucketPath,
whose images are read from this machine's mirror of them (carsweep/data/mirror.py):
`image_path` names a file there, `image_files(rows)` fetches what is missing first. A relative
`root` is taken from the dataset's folder, in a bucket too.

Splits are named for what they are: `official` keeps the source's train/test and carves val
from train; `pooled:0.7` pools everything and re-splits (the hackathon team's protocol), and
its scores must never be compared with the official benchmark.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from carsweep.errors import UserError
from carsweep.storage import BucketPath, is_bucket, location

BOX_COLUMNS = ["x1", "y1", "x2", "y2"]  # the object's box in the original image, or empty
MANIFEST_COLUMNS = [
    "path", "label", "class_name", *BOX_COLUMNS, "source_split", "split", "sha1", "width",
    "height",
]
SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.csv"
CLASSES_FILE = "classes.json"
INFO_FILE = "dataset.json"
AUDIT_FILE = "audit.json"
PARTS_FILE = "parts.csv"
PARTS_COLUMNS = ["path", "part", *BOX_COLUMNS]


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder, read into memory (the images stay on disk under `root`)."""

    folder: Path | BucketPath
    root: Path | BucketPath
    manifest: pd.DataFrame
    classes: list[str]
    info: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def split_scheme(self) -> str:
        return self.info["split_scheme"]

    def rows(self, *splits: str) -> pd.DataFrame:
        """The manifest rows of the given splits, in manifest order, index reset."""
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; valid: {list(SPLITS)}")
        return self.manifest[self.manifest["split"].isin(splits)].reset_index(drop=True)

    def image_path(self, relative: str) -> Path:
        """Where this machine reads an image: under `root`, or for images in a bucket, in
        this machine's mirror of them (carsweep/data/mirror.py; `image_files` fills it)."""
        return self.images_folder / relative

    @property
    def images_folder(self) -> Path:
        if is_bucket(self.root):
            from carsweep.data.mirror import mirror_folder  # mirror.py imports this module

            return mirror_folder(self.root)
        return self.root

    def image_files(self, rows: pd.DataFrame) -> list[Path]:
        """The image files of `rows` on this machine, in order: images in a bucket are
        mirrored here first (what is there already, checked, is not fetched again)."""
        if is_bucket(self.root):
            from carsweep.data.mirror import bring_here

            bring_here(self, rows)
        folder = self.images_folder
        return [folder / relative for relative in rows["path"]]

    def parts(self) -> pd.DataFrame | None:
        """The class-deciding part boxes (PARTS_COLUMNS), or None if the source had none."""
        name = self.info.get("parts_file")
        if not name:
            return None
        return pd.read_csv(_readable(self.folder / name), dtype={"path": str, "part": str})


def load_dataset(folder: Path | str | BucketPath) -> PreparedDataset:
    """Read a folder written by `carsweep prepare` (a local path, or a bucket URI); a folder
    that is not one is a UserError."""
    folder = location(folder)
    if is_bucket(folder):
        folder = folder.listed()  # one LIST answers the existence checks below
    if not folder.is_dir():
        raise UserError(f"{folder}: no such dataset folder (make one with `carsweep prepare`)")
    missing = [name for name in (MANIFEST_FILE, CLASSES_FILE, INFO_FILE)
               if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{folder}: not a prepared dataset (missing {', '.join(missing)}); "
            "run `carsweep prepare SOURCE --out DATASET` first"
        )
    manifest = _read_file(folder / MANIFEST_FILE, _read_manifest)
    classes = _read_file(folder / CLASSES_FILE, _read_json)
    info = _read_file(folder / INFO_FILE, _read_json)
    _check_prepared(folder, manifest, classes, info)
    root = _root(folder, info["root"])
    return PreparedDataset(folder=folder, root=root, manifest=manifest, classes=classes, info=info)


def _root(folder: Path | BucketPath, root: str) -> Path | BucketPath:
    """dataset.json's `root`: a URI is a bucket folder; an absolute path is a local folder
    (wherever the dataset is read from); a relative one is taken from the dataset's folder."""
    if "://" in root:
        return location(root)
    if Path(root).is_absolute():
        return Path(root)
    if is_bucket(folder):
        return BucketPath(folder.filesystem, folder.scheme,
                          posixpath.normpath(posixpath.join(folder.fs_path, root)), folder.query)
    return (folder / root).resolve()


def _readable(path: Path | BucketPath):
    """What pandas reads: a local path, or a bucket file's bytes."""
    return io.BytesIO(path.read_bytes()) if is_bucket(path) else path


def _read_manifest(path: Path | BucketPath) -> pd.DataFrame:
    return pd.read_csv(
        _readable(path),
        dtype={"path": str, "class_name": str, "source_split": str, "split": str, "sha1": str},
        keep_default_na=False,
        na_values={c: [""] for c in BOX_COLUMNS},
    )


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _read_file(path: Path, read):
    """`read(path)`, where a file that does not parse (cut short, edited, not text) is one line
    naming it."""
    try:
        return read(path)
    except (ValueError, pd.errors.ParserError) as error:  # JSON, UTF-8, CSV and dtype errors
        raise UserError(damaged(path, str(error).splitlines()[0] if str(error) else
                                type(error).__name__)) from None


def damaged(path: Path, problem: str) -> str:
    return (f"{path}: {problem}; the prepared dataset is damaged: prepare it again with "
            "`carsweep prepare SOURCE --out DATASET --force`")


def _check_prepared(folder: Path, manifest: pd.DataFrame, classes, info) -> None:
    """The three files agree with the contract above (a hand edit, a copy cut short, files of
    two preparations mixed), so no trial fails later on a KeyError or a label out of range."""
    if not (isinstance(classes, list) and classes
            and all(isinstance(name, str) for name in classes)):
        raise UserError(damaged(folder / CLASSES_FILE, "expected a list of class names"))
    if not (isinstance(info, dict) and isinstance(info.get("root"), str)):
        raise UserError(damaged(folder / INFO_FILE, "expected a mapping with the images' root"))
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise UserError(damaged(folder / MANIFEST_FILE, f"missing column(s) {missing}"))
    if manifest.empty:
        raise UserError(damaged(folder / MANIFEST_FILE, "no images listed"))
    labels = pd.to_numeric(manifest["label"], errors="coerce")
    bad_label = ~labels.between(0, len(classes) - 1) | (labels % 1 != 0)
    bad_split = ~manifest["split"].isin(SPLITS)
    for name, bad, want in (("label", bad_label, f"a class index 0..{len(classes) - 1} into "
                             f"{CLASSES_FILE}"), ("split", bad_split, f"one of {list(SPLITS)}")):
        if bad.any():
            row = int(bad.idxmax())
            problem = f"line {row + 2} has {name} {str(manifest[name][row])!r}, not {want}"
            raise UserError(damaged(folder / MANIFEST_FILE, problem))
