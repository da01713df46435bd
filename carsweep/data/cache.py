"""Decode once: every image of a prepared dataset, resized, as one memory-mapped uint8 array.

A trial that decodes JPEGs every epoch is limited by the CPU (about 150-300 images/s per core
with resize), while a GPU trains ResNet-18 at thousands. So `build_cache` decodes each image of
the manifest once per input size, in parallel over the CPU cores, and writes

    DATASET/cache/400.u8.npy     uint8 (N, 3, 400, 400), manifest order, CHW like PILToTensor
    DATASET/cache/400.json       size, count, bbox_crop, and the manifest checksum it was built from

(`400-bbox.*` when images were cropped to their boxes first). The array is a plain .npy file, so
`np.load(mmap_mode="r")` maps it read-only: every trial on a node maps the same file and the
kernel's page cache holds one copy for all of them. When the file does not fit in RAM, pages are
read from disk on demand and evicted again, so the cache still works, at disk speed.

The resize is PIL's bilinear (antialiased) resize to a square, exactly what the trainable's
`eval_transform` does (torchvision's `v2.Resize((S, S))` on a PIL image), so a cached image and
a freshly decoded one are the same tensor. The checksum covers the path, sha1 and order of every
row (and the boxes when cropping): a re-prepared dataset makes the old cache stale, which
`open_cache` detects. Files are written to a temporary name and renamed; a lock file keeps two
processes from building the same cache at once (the second waits and reuses the first's).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from carsweep.config.io import write_text_atomic
from carsweep.data.images import DECODE_ERRORS, open_rgb
from carsweep.errors import UserError

if TYPE_CHECKING:  # pandas is only needed by callers that hold a manifest
    import pandas as pd

    from carsweep.data.manifest import PreparedDataset

CACHE_FOLDER = "cache"
FORMAT_VERSION = 1
MIN_SIZE, MAX_SIZE = 16, 2048
CHUNK = 32  # images per task handed to a worker: small enough for a smooth progress bar
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]


class CacheError(UserError):
    """A cache that cannot be used as asked (missing, stale, an unreadable image); the message
    says what to run."""


@dataclass(frozen=True)
class CacheFiles:
    """Where the cache of one (size, bbox_crop) lives inside a dataset folder."""

    array: Path
    sidecar: Path
    lock: Path

    @classmethod
    def of(cls, folder: Path, size: int, bbox_crop: bool = False) -> CacheFiles:
        stem = f"{size}-bbox" if bbox_crop else f"{size}"
        base = Path(folder) / CACHE_FOLDER
        return cls(array=base / f"{stem}.u8.npy", sidecar=base / f"{stem}.json",
                   lock=base / f"{stem}.lock")


def check_size(size: int) -> int:
    """The size itself, or a ValueError naming it and the valid range."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"cache size must be an int, got {type(size).__name__} {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"cache size is {size}, but must be {MIN_SIZE} <= size <= {MAX_SIZE}")
    return int(size)


def manifest_checksum(manifest: pd.DataFrame, size: int, bbox_crop: bool = False) -> str:
    """sha1 over the format version, size, crop flag and every row's path and sha1, in order."""
    digest = hashlib.sha1(f"carsweep-cache v{FORMAT_VERSION} {size} {bbox_crop}\n".encode())
    columns = ["path", "sha1"] + (BOX_COLUMNS if bbox_crop else [])
    for row in manifest[columns].itertuples(index=False):
        digest.update(("\t".join(map(str, row)) + "\n").encode())
    return digest.hexdigest()


def cache_state(dataset: PreparedDataset, size: int, bbox_crop: bool = False) -> str:
    """"fresh", "missing" or "stale" (built from another manifest, size or crop setting)."""
    files = CacheFiles.of(dataset.folder, check_size(size), bbox_crop)
    if not (files.array.is_file() and files.sidecar.is_file()):
        return "missing"
    try:
        recorded = json.loads(files.sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return "stale"
    expected = manifest_checksum(dataset.manifest, size, bbox_crop)
    fresh = (recorded.get("checksum") == expected and recorded.get("count") == len(dataset.manifest)
             and recorded.get("size") == size)
    return "fresh" if fresh else "stale"


def open_cache(dataset: PreparedDataset, size: int, *, bbox_crop: bool = False,
               build: bool = False, workers: int | None = None,
               progress: bool = False) -> np.memmap:
    """The cache of `size` as a read-only memmap (N, 3, size, size), rows in manifest order.

    A missing or stale cache is built when `build` is true, else a CacheError says so and
    names the command that builds it.
    """
    state = cache_state(dataset, size, bbox_crop)
    if state != "fresh":
        if not build:
            raise CacheError(
                f"{dataset.folder}: the {size}px decoded cache is {state}"
                + (" (the manifest changed since it was built)" if state == "stale" else "")
                + f"; build it with `carsweep prepare ... --cache {size}` or build_cache()"
            )
        build_cache(dataset, size, bbox_crop=bbox_crop, workers=workers, progress=progress)
    return map_array(CacheFiles.of(dataset.folder, size, bbox_crop).array)


def map_array(path: Path) -> np.memmap:
    """Map a uint8 .npy file read-only: pages are shared with every other process mapping it."""
    return np.load(path, mmap_mode="r")


def build_cache(dataset: PreparedDataset, size: int, *, bbox_crop: bool = False,
                workers: int | None = None, progress: bool = True, force: bool = False) -> Path:
    """Decode and resize every manifest image to `size` px once; returns the array's path.

    A fresh cache is kept unless `force`. Uses `workers` processes (default: all CPU cores).
    """
    size = check_size(size)
    files = CacheFiles.of(dataset.folder, size, bbox_crop)
    files.array.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(files.lock):
        if not force and cache_state(dataset, size, bbox_crop) == "fresh":
            return files.array  # built meanwhile by another process, or already there
        paths = [str(dataset.image_path(p)) for p in dataset.manifest["path"]]
        boxes = (dataset.manifest[BOX_COLUMNS].to_numpy(dtype=float) if bbox_crop
                 else np.full((len(paths), 4), np.nan))
        temporary = files.array.with_name(f".{files.array.name}.{os.getpid()}.tmp.npy")
        try:
            _decode_all(temporary, paths, boxes, size, workers or os.cpu_count() or 1, progress)
            sidecar = {
                "format_version": FORMAT_VERSION, "size": size, "count": len(paths),
                "bbox_crop": bbox_crop, "layout": "N,3,H,W uint8 RGB",
                "checksum": manifest_checksum(dataset.manifest, size, bbox_crop),
            }
            os.replace(temporary, files.array)
            write_text_atomic(files.sidecar, json.dumps(sidecar, indent=2) + "\n")
        finally:
            temporary.unlink(missing_ok=True)
    return files.array


def decode_resized(path: str | Path, size: int, box: Sequence[float] | None = None) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, cropped to `box` if given, bilinear resize."""
    try:
        image = open_rgb(path)
    except DECODE_ERRORS as error:
        raise CacheError(f"{path}: cannot decode the image ({error})") from error
    if box is not None:
        image = crop_to_box(image, np.asarray(box, dtype=float))
    # PIL's resize antialiases; torchvision's v2.Resize((S, S)) on a PIL image calls exactly this.
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def crop_to_box(image: Image.Image, box: np.ndarray) -> Image.Image:
    """The image cropped to box (x1, y1, x2, y2), clamped to the image; unknown box -> as is."""
    if np.isnan(box).any():
        return image
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(image.width, int(np.ceil(box[2]))), min(image.height, int(np.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return image  # a degenerate box says nothing useful about where the object is
    return image.crop((x1, y1, x2, y2))


def _decode_all(target: Path, paths: list[str], boxes: np.ndarray, size: int, workers: int,
                progress: bool) -> None:
    """Fill a new .npy at `target` with every image, `workers` processes writing disjoint rows."""
    array = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8,
                                      shape=(len(paths), 3, size, size))
    del array  # header and file size are on disk; workers map the file themselves
    tasks = [(str(target), start, paths[start:start + CHUNK], boxes[start:start + CHUNK], size)
             for start in range(0, len(paths), CHUNK)]
    with _progress_bar(len(paths), f"decoding to {size}px", progress) as advance:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                advance(_decode_chunk(task))
            return
        # fork, as DataLoader workers do: a spawned worker would re-import the caller's main
        # module (torch and all) first. The workers use only PIL and numpy, never CUDA.
        context = get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                 mp_context=context) as pool:
            for done in pool.map(_decode_chunk, tasks):
                advance(done)


def _decode_chunk(task: tuple[str, int, list[str], np.ndarray, int]) -> int:
    target, start, paths, boxes, size = task
    array = np.load(target, mmap_mode="r+")
    for offset, (path, box) in enumerate(zip(paths, boxes, strict=True)):
        array[start + offset] = decode_resized(path, size, None if np.isnan(box).any() else box)
    array.flush()
    return len(paths)


@contextmanager
def _progress_bar(total: int, label: str, enabled: bool) -> Iterator:
    """tqdm on stderr when enabled (and installed); a no-op counter otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if not enabled or tqdm is None:
        yield lambda n: None
        return
    with tqdm(total=total, desc=label, unit="img", file=sys.stderr) as bar:
        yield bar.update


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock held while building, so concurrent trials build a cache only once."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

