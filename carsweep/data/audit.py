"""The audit of a source: does every image decode, and what does the prepared dataset hold?

`inspect_images` opens and fully decodes each file (PIL), converts it to RGB as the loaders
will (carsweep/data/images.py), and records its bytes' sha1, size and mode, or why it failed.
`audit_report` turns that and the split manifest into audit.json: class counts per split
(min / max / imbalance), tiny images, exact duplicates across splits, colour modes converted,
images with transparency, unreadable files left out.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
from PIL import Image

from carsweep.data.images import DECODE_ERRORS, has_alpha, to_rgb
from carsweep.data.parallel import forked_map

INSPECT_COLUMNS = ["path", "sha1", "width", "height", "mode", "alpha", "error"]
PARALLEL_FROM = 400  # images; below this a process pool costs more than it saves
SPLIT_ORDER = ("train", "val", "test")
LISTED = 20  # at most this many paths per list in audit.json's summary lists


def inspect_images(root: Path, paths: list[str], workers: int | None = None) -> pd.DataFrame:
    """One row per path (INSPECT_COLUMNS); `error` is "" for a good image, else the reason."""
    root = Path(root)
    tasks = [str(root / p) for p in paths]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(tasks) >= PARALLEL_FROM else 1
    results = list(forked_map(inspect_one, tasks, workers, chunksize=64))
    table = pd.DataFrame(results, columns=INSPECT_COLUMNS[1:])
    table.insert(0, "path", list(paths))
    return table


def inspect_one(path: str) -> tuple[str, int, int, str, bool, str]:
    """(sha1, width, height, mode, has alpha, error) of one file; never raises on bad data."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return "", 0, 0, "", False, f"cannot read: {error.strerror or error}"
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(path) as image:
            image.load()
            to_rgb(image)  # the conversion the loaders will make must work too
            return sha1, image.width, image.height, image.mode, has_alpha(image), ""
    except DECODE_ERRORS as error:
        return sha1, 0, 0, "", False, f"cannot decode: {error}"


def audit_report(manifest: pd.DataFrame, inspected: pd.DataFrame, *, tiny_px: int) -> dict:
    """audit.json's content for the kept `manifest` rows and the `inspected` table of all."""
    bad = inspected[inspected["error"] != ""]
    kept = inspected[inspected["error"] == ""].set_index("path").loc[manifest["path"]]
    tiny = kept[(kept[["width", "height"]].min(axis=1)) < tiny_px]
    return {
        "images": int(len(manifest)),
        "classes_per_split": _class_counts(manifest),
        "unreadable": [{"path": p, "error": e} for p, e in zip(bad["path"], bad["error"],
                                                               strict=True)],
        "tiny_px": tiny_px,
        "tiny": _listed(tiny.index.tolist()),
        "modes": {str(k): int(v) for k, v in kept["mode"].value_counts().sort_index().items()},
        "converted_to_rgb": int((kept["mode"] != "RGB").sum()),
        "with_alpha": _listed(kept.index[kept["alpha"]].tolist()),
        "duplicates_across_splits": _cross_split_duplicates(manifest),
        "duplicates_within_splits": int(_within_split_duplicates(manifest)),
    }


def _class_counts(manifest: pd.DataFrame) -> dict:
    counts = {}
    for split in SPLIT_ORDER:
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            continue
        per_class = rows["class_name"].value_counts()
        counts[split] = {
            "images": int(len(rows)),
            "classes": int(per_class.size),
            "min": int(per_class.min()),
            "max": int(per_class.max()),
            "imbalance": round(float(per_class.max() / per_class.min()), 3),
            "smallest_class": str(per_class.idxmin()),
        }
    return counts


def _cross_split_duplicates(manifest: pd.DataFrame) -> dict:
    """Groups of identical files (same sha1) that sit in more than one split."""
    groups = []
    for sha1, rows in manifest.groupby("sha1", sort=True):
        if rows["split"].nunique() > 1:
            groups.append({"sha1": sha1, "paths": rows["path"].tolist(),
                           "splits": rows["split"].tolist()})
    return {"count": len(groups), "groups": groups[:LISTED]}


def _within_split_duplicates(manifest: pd.DataFrame) -> int:
    """Extra copies of a file inside one split (a group of 3 identical files counts 2)."""
    return int(manifest.duplicated(subset=["split", "sha1"]).sum())


def _listed(paths: list[str]) -> dict:
    return {"count": len(paths), "paths": paths[:LISTED]}


def format_audit(report: dict) -> str:
    """A few lines for people: what `prepare` found (the details are in audit.json)."""
    lines = [f"{report['images']} images kept"]
    for split, counts in report["classes_per_split"].items():
        lines.append(f"  {split:5s} {counts['images']:6d} images, {counts['classes']} classes, "
                     f"{counts['min']}-{counts['max']} per class "
                     f"(imbalance {counts['imbalance']:g}, smallest: {counts['smallest_class']})")
    problems = [
        (len(report["unreadable"]), "unreadable file(s) left out"),
        (report["duplicates_across_splits"]["count"], "identical file(s) found in two splits"),
        (report["duplicates_within_splits"], "duplicate file(s) within a split"),
        (report["tiny"]["count"], f"tiny image(s) under {report['tiny_px']} px"),
        (report["converted_to_rgb"], "non-RGB image(s) converted to RGB"),
        (report["with_alpha"]["count"], "image(s) with transparency"),
    ]
    lines += [f"  {count} {what}" for count, what in problems if count]
    return "\n".join(lines)
