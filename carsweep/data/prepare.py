"""`prepare`: a dataset source -> a prepared dataset folder (see manifest.py for the contract).

read the source (sources.py) -> decode every image (audit.py) -> leave out the unreadable ->
split (splits.py) -> write manifest.csv, classes.json, dataset.json, audit.json and, if the
source has one, parts.csv, into a temporary folder that then replaces `out` whole. Images are
not copied: dataset.json's `root` points at them.

Either may be in a bucket (bucket_source.py): a source there is staged on this machine and
read as a folder, its `root` being its URI; a dataset there is built locally and uploaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from carsweep import __version__
from carsweep.data.audit import audit_report, format_audit, inspect_images
from carsweep.data.bucket_source import (
    building_for_bucket,
    check_bucket_out,
    same_place_or_above,
    stage_source,
)
from carsweep.data.folders import building_folder, check_replaceable
from carsweep.data.manifest import (
    AUDIT_FILE,
    CLASSES_FILE,
    INFO_FILE,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    PARTS_COLUMNS,
    PARTS_FILE,
    PreparedDataset,
    load_dataset,
)
from carsweep.data.sources import SourceIndex, read_source
from carsweep.data.splits import check_val_fraction, parse_scheme, split_manifest
from carsweep.errors import UserError
from carsweep.storage import BucketPath, is_bucket, location


def prepare_dataset(
    source: Path | str | BucketPath, out: Path | str | BucketPath, *, layout: str = "auto",
    split: str = "official", val_fraction: float = 0.1, seed: int = 0, strict: bool = False,
    force: bool = False, tiny_px: int = 32, workers: int | None = None,
    warn: Callable[[str], None] = lambda line: print(f"warning: {line}", file=sys.stderr),
    say: Callable[[str], None] = print,
) -> PreparedDataset:
    """Index, audit and split `source` into the prepared dataset folder `out`; returns it.
    Either may be a bucket URI (`say` tells where a bucket source is staged)."""
    scheme = parse_scheme(split)  # every argument is checked before any work is done
    check_val_fraction(val_fraction)
    source, out = location(source), location(out)
    _check_out_is_not_the_source(source, out)
    if is_bucket(out):
        check_bucket_out(out, force=force)
    else:
        check_replaceable(out, force=force, what="the prepared dataset", flag="--out")
    folder = stage_source(source, say=say) if is_bucket(source) else Path(source)
    with _naming(folder, source, warn) as warn:
        index = read_source(folder, layout)
        _check_two_classes(index.root, index.classes)
        inspected = inspect_images(index.root, index.images["path"].tolist(), workers)
        images = _leave_out_unreadable(index, inspected, strict, warn)
        manifest = build_manifest(index, images, inspected, scheme, seed, val_fraction)
        _check_every_class_trains(manifest, warn)
    report = audit_report(manifest, inspected, tiny_px=tiny_px)
    info = {
        "root": _root_of(index.root, folder, source),
        "source": str(source) if is_bucket(source) else str(Path(source).resolve()),
        "layout": index.layout,
        "split_scheme": str(scheme),
        "seed": seed,
        "val_fraction": val_fraction,
        "num_classes": len(index.classes),
        "counts": {s: int((manifest["split"] == s).sum()) for s in ("train", "val", "test")},
        "parts_file": None,
        "carsweep_version": __version__,
    }
    building = building_for_bucket(out) if is_bucket(out) else building_folder(out)
    with building as built:
        manifest.to_csv(built / MANIFEST_FILE, index=False)
        (built / CLASSES_FILE).write_text(json.dumps(index.classes, indent=1) + "\n")
        if _copy_parts(index.root, manifest, built / PARTS_FILE, warn):
            info["parts_file"] = PARTS_FILE
        (built / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (built / AUDIT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return load_dataset(out)


def _root_of(index_root: Path, folder: Path, source: Path | BucketPath) -> str:
    """dataset.json's `root`: the images' absolute folder, or for a source in a bucket the URI
    of the folder the layout found them in (the source's, or the devkit's stanford_cars/)."""
    if not is_bucket(source):
        return str(index_root)
    below = index_root.relative_to(folder.resolve()).as_posix()
    return str(source if below == "." else source / below)


@contextmanager
def _naming(folder: Path, source: Path | BucketPath,
            warn: Callable[[str], None]) -> Iterator[Callable[[str], None]]:
    """The readers' errors and warnings name the source the user gave: for a staged bucket
    source, its URI in place of the staged copy's path."""
    if not is_bucket(source):
        yield warn
        return
    staged = str(folder.resolve())

    def named(line: str) -> str:
        return line.replace(staged, str(source))

    try:
        yield lambda line: warn(named(line))
    except UserError as error:
        raise UserError(named(str(error))) from None


def summary(dataset: PreparedDataset) -> str:
    """What `carsweep prepare` prints: layout, scheme and the audit's short form."""
    audit = json.loads((dataset.folder / AUDIT_FILE).read_text())
    head = (f"{dataset.info['layout']} source {dataset.root}: {dataset.num_classes} classes, "
            f"split {dataset.split_scheme} (seed {dataset.info['seed']})")
    return f"{head}\n{format_audit(audit)}\nwrote {dataset.folder}"


def build_manifest(index: SourceIndex, images: pd.DataFrame, inspected: pd.DataFrame,
                   scheme, seed: int, val_fraction: float) -> pd.DataFrame:
    """The manifest rows (MANIFEST_COLUMNS) of the kept `images`, split and labelled."""
    split = split_manifest(images, scheme, seed, val_fraction)
    facts = inspected.set_index("path").loc[split["path"], ["sha1", "width", "height"]]
    split[["sha1", "width", "height"]] = facts.to_numpy()
    label_of = {name: label for label, name in enumerate(index.classes)}
    split["label"] = split["class_name"].map(label_of).astype(int)
    return split[MANIFEST_COLUMNS].reset_index(drop=True)


def _check_out_is_not_the_source(source: Path | BucketPath, out: Path | BucketPath) -> None:
    """--force replaces `out` whole: it must never hold the images the dataset points at."""
    if is_bucket(source) or is_bucket(out):
        if is_bucket(source) and is_bucket(out) and same_place_or_above(out, source):
            raise UserError(f"--out {out} holds the source {source}; choose an output prefix "
                            "outside it (the images are not copied, so replacing it would lose "
                            "them)")
        return
    source, target = source.resolve(), out.resolve()
    if target == source or target in source.parents:
        raise UserError(f"--out {out} holds the source {source}; choose an output folder "
                        "outside it (the images are not copied, so replacing it would lose them)")


def _leave_out_unreadable(index: SourceIndex, inspected: pd.DataFrame, strict: bool,
                          warn: Callable[[str], None]) -> pd.DataFrame:
    bad = inspected[inspected["error"] != ""]
    if bad.empty:
        return index.images
    if strict:
        first = bad.iloc[0]
        raise UserError(f"{index.root / first['path']}: {first['error']} "
                        f"({len(bad)} unreadable image(s); --strict refuses them)")
    for path, error in zip(bad["path"], bad["error"], strict=True):
        warn(f"{index.root / path}: {error}; left out")
    kept = index.images[~index.images["path"].isin(set(bad["path"]))]
    empty = sorted(set(index.classes) - set(kept["class_name"]))
    if empty:
        raise UserError(f"class {empty[0]!r} has no readable images left; fix or remove "
                        "its unreadable files")
    return kept.reset_index(drop=True)


def _check_two_classes(root: Path, classes: list[str]) -> None:
    """A classifier of one class learns nothing: every sweep would report 100 %."""
    if len(classes) < 2:
        raise UserError(f"{root}: {len(classes)} class ({', '.join(map(repr, classes))}); a "
                        "classifier needs at least 2 classes to tell apart")


def _copy_parts(root: Path, manifest: pd.DataFrame, target: Path,
                warn: Callable[[str], None]) -> bool:
    """Carry the source's parts.csv (synthetic part boxes) over for the kept images."""
    source = root / PARTS_FILE
    if not source.is_file():
        return False
    try:
        parts = pd.read_csv(source)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{source}: not a readable CSV ({error}); expected columns "
                        f"{','.join(PARTS_COLUMNS)}") from None
    if list(parts.columns) != PARTS_COLUMNS:
        warn(f"{source}: columns {list(parts.columns)} are not {PARTS_COLUMNS}; part boxes "
             "not carried over")
        return False
    parts[parts["path"].isin(set(manifest["path"]))].to_csv(target, index=False)
    return True


def _check_every_class_trains(manifest: pd.DataFrame, warn: Callable[[str], None]) -> None:
    """A class with no training image cannot be learnt (an error); one with a single training
    image can, barely, and gets no val image (a warning)."""
    train = manifest.loc[manifest["split"] == "train", "class_name"].value_counts()
    elsewhere = manifest[(manifest["split"] != "train") & ~manifest["class_name"].isin(train.index)]
    if not elsewhere.empty:
        first = elsewhere.iloc[0]
        count = int((elsewhere["class_name"] == first["class_name"]).sum())
        raise UserError(f"class {first['class_name']!r} has {count} {first['split']} image(s) "
                        "but none in train, so no model can learn it; add training images or "
                        "re-split every class with --split pooled:R")
    single = sorted(train.index[train == 1])
    if single:
        shown = ", ".join(repr(name) for name in single[:5]) + (", ..." if len(single) > 5 else "")
        warn(f"{len(single)} class(es) have a single training image and no val image: {shown}")

