"""Building a decoded cache (carsweep/data/cache.py says what one is): every train+val image
decoded once, in parallel over the node's cores, under a lock, with progress.

The resize is PIL's bilinear (antialiased) resize to a square, exactly what the trainable's
`eval_transform` does, so a cached image and a freshly decoded one are the same tensor.

Building happens under the lock (a second builder waits, then reuses the first one's file),
only when the disk has room for the whole array plus a reserve (`cache_plan`: 5 % of the disk,
at most 1 GiB, for the checkpoints, logs and spilled objects that share it), into a temporary
file allocated in full up front (so a disk that fills up meanwhile is an error at the start,
not a crash halfway), then renamed. An unreadable image is one line naming it, and the
temporary file is removed.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from carsweep.config.io import write_text_atomic
from carsweep.data.cache import (
    CACHED_SPLITS,
    FORMAT_VERSION,
    CacheDiskError,
    CacheError,
    CachePlan,
    cache_plan,
    cached_rows,
    format_bytes,
    held_alone,
)
from carsweep.data.images import DECODE_ERRORS, open_rgb
from carsweep.data.manifest import BOX_COLUMNS
from carsweep.data.parallel import forked_map, progress_bar
from carsweep.storage import is_bucket

if TYPE_CHECKING:
    from carsweep.data.manifest import PreparedDataset

CHUNK = 32  # at most this many images per task handed to a worker


def build_cache(dataset: PreparedDataset, size: int, *, bbox_crop: bool = False,
                cache_dir: str | Path | None = None, workers: int | None = None,
                progress: bool = True) -> Path:
    """The array of the cache of `size`: there already, or built now; see `build_steps`."""
    plan = cache_plan(dataset, size, bbox_crop, cache_dir)
    if plan.state == "fresh":
        return plan.array
    with closing(build_steps(dataset, plan, workers=workers)) as steps, \
            progress_bar(plan.count, f"decoding to {plan.label}", progress) as advance:
        done_before = 0
        for done, _ in steps:
            advance(done - done_before)
            done_before = done
    return plan.array


def build_steps(dataset: PreparedDataset, plan: CachePlan, *,
                workers: int | None = None) -> Iterator[tuple[int, int]]:
    """Build the cache `plan` describes, yielding (images decoded, total) as it goes.

    Under the lock: a cache another process finished meanwhile is kept (nothing is yielded);
    no room, or a folder that cannot be written, is a CacheDiskError; otherwise every image is
    decoded, in `workers` processes (default: all cores), into a temporary file that replaces
    the array only when whole."""
    with held_alone(plan.folder, plan.lock):
        plan = cache_plan(dataset, plan.size, plan.bbox_crop, plan.folder)  # as it is now
        if plan.state == "fresh":
            return
        if not plan.has_room:
            raise CacheDiskError(plan.room_problem())
        _remove_leftovers(plan)
        yield from _decode_into_place(dataset, plan, workers or os.cpu_count() or 1)


def _decode_into_place(dataset: PreparedDataset, plan: CachePlan,
                       workers: int) -> Iterator[tuple[int, int]]:
    rows = cached_rows(dataset)
    paths = list(map(str, dataset.image_files(rows)))
    boxes = (rows[BOX_COLUMNS].to_numpy(dtype=float) if plan.bbox_crop
             else np.full((len(paths), 4), np.nan))
    temporary = plan.folder / f".{plan.array.name}.{os.getpid()}.tmp"
    try:
        _allocate(temporary, plan)
        yield 0, len(paths)
        done = 0
        for count in _decode_all(temporary, paths, boxes, plan.size, workers):
            done += count
            yield done, len(paths)
        sidecar = {
            "format_version": FORMAT_VERSION, "size": plan.size, "count": len(paths),
            "bbox_crop": plan.bbox_crop, "splits": list(CACHED_SPLITS),
            "layout": "N,3,H,W uint8 RGB", "checksum": plan.checksum,
            "dataset": str(dataset.folder if is_bucket(dataset.folder)
                           else Path(dataset.folder).absolute()),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_text_atomic(plan.sidecar, json.dumps(sidecar, indent=2) + "\n")
        os.replace(temporary, plan.array)  # last: a whole array is the sign of a whole cache
    finally:
        temporary.unlink(missing_ok=True)


def _allocate(temporary: Path, plan: CachePlan) -> None:
    """A new .npy with its header, its whole size reserved on the disk: a full disk fails
    here, not as a SIGBUS when a worker writes a page of the memory map later."""
    shape = (plan.count, 3, plan.size, plan.size)
    array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
    del array  # header and file size are on disk; workers map the file themselves
    descriptor = os.open(temporary, os.O_RDWR)
    try:
        os.posix_fallocate(descriptor, 0, plan.bytes_needed)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate there: go on
            raise CacheDiskError(f"cannot reserve {format_bytes(plan.bytes_needed)} for the "
                                 f"{plan.label} cache in {plan.folder} "
                                 f"({error.strerror})") from None
    finally:
        os.close(descriptor)


def _remove_leftovers(plan: CachePlan) -> None:
    """Temporary files of builders that were killed (we hold the lock: no builder is live)."""
    for leftover in plan.folder.glob(f".{plan.array.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


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


def _decode_all(target: Path, paths: list[str], boxes: np.ndarray, size: int,
                workers: int) -> Iterator[int]:
    """Fill the .npy at `target`, workers writing disjoint rows; yields images done per task."""
    # Small sets get small tasks, so progress still moves in steps of about a tenth.
    chunk = max(1, min(CHUNK, len(paths) // (10 * workers)))
    tasks = [(str(target), start, paths[start:start + chunk], boxes[start:start + chunk], size)
             for start in range(0, len(paths), chunk)]
    yield from forked_map(_decode_chunk, tasks, workers)


def _decode_chunk(task: tuple[str, int, list[str], np.ndarray, int]) -> int:
    target, start, paths, boxes, size = task
    array = np.load(target, mmap_mode="r+")
    for offset, (path, box) in enumerate(zip(paths, boxes, strict=True)):
        array[start + offset] = decode_resized(path, size, None if np.isnan(box).any() else box)
    array.flush()
    return len(paths)

