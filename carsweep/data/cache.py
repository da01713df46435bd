"""Decode once: a prepared dataset's train+val images, resized, as one memory-mapped uint8 array
on the local disk of the node that trains.

A trial that decodes JPEGs every epoch is limited by the CPU (about 150-300 images/s per core
with resize), while a GPU trains ResNet-18 at thousands. So each node decodes every train and
val image once per (input size, bbox crop), in parallel over its cores, into a folder of its
own local disk, `cache_dir` (TrialConfig; default $CARSWEEP_CACHE_DIR, else
/tmp/carsweep-cache, resolved on the node itself, so every node uses its own disk):

    CACHE_DIR/400px-<key>.u8.npy   uint8 (N, 3, 400, 400): the train+val rows, manifest order,
                                   CHW like PILToTensor
    CACHE_DIR/400px-<key>.json     size, count, crop, splits, the full checksum, the dataset
    CACHE_DIR/400px-<key>.lock     held while building, so concurrent builders build once

(`400px-bbox-<key>` when images were cropped to their boxes first). Only train and val are
cached: a sweep and analyze's retrain read nothing else; the test split is decoded once by
analyze and never cached. A loader of splits within train+val reads the cache; any loader
touching test decodes.

The key is the first 16 hex digits of a sha1 over the format version, size, crop flag and, in
manifest order, every train+val row's path and sha1 (and box when cropping). Two datasets, or
two preparations of one, never share a file, and a changed manifest simply means a new key:
the old file is never read again. Nothing deletes old caches: clear them on each node with
`rm -rf /tmp/carsweep-cache` (or your cache_dir) while no trial runs there.

The array is a plain .npy file, so `np.load(mmap_mode="r")` maps it read-only: every trial on
a node maps the same file and the kernel's page cache holds one copy for all of them; a cache
larger than RAM is paged in from disk on demand. The resize is PIL's bilinear (antialiased)
resize to a square, exactly what the trainable's `eval_transform` does, so a cached image and
a freshly decoded one are the same tensor.

Building happens under the lock (a second builder waits, then reuses the first one's file),
only when the disk has room for the whole array plus a reserve (`cache_plan`: 5 % of the disk,
at most 1 GiB, for the checkpoints, logs and spilled objects that share it), into a temporary
file allocated in full up front (so a disk that fills up meanwhile is an error at the start,
not a crash halfway), then renamed. An unreadable image is one line naming it, and the
temporary file is removed.

A cache on a network file system, or under a folder every node shares, still works, but is no
faster than decoding (BENCHMARKS.md: 100-200 MB/s): `shared_storage_warning` says so.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from carsweep.config.io import write_text_atomic
from carsweep.data.images import DECODE_ERRORS, open_rgb
from carsweep.data.parallel import forked_map, progress_bar
from carsweep.errors import UserError

if TYPE_CHECKING:  # pandas is only needed by callers that hold a manifest
    import pandas as pd

    from carsweep.data.manifest import PreparedDataset

CACHE_DIR_VARIABLE = "CARSWEEP_CACHE_DIR"
DEFAULT_CACHE_DIR = "/tmp/carsweep-cache"
CACHED_SPLITS = ("train", "val")
FORMAT_VERSION = 2
KEY_DIGITS = 16
MIN_SIZE, MAX_SIZE = 16, 2048
CHUNK = 32  # at most this many images per task handed to a worker
RESERVE_FRACTION, RESERVE_MAX = 0.05, 2**30
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
# File system types whose reads cross the network (statfs names, as /proc/mounts shows them).
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph",
                        "beegfs")


class CacheError(UserError):
    """A cache that cannot be built as asked (an unreadable image, a bad size)."""


class CacheDiskError(CacheError):
    """The cache folder cannot take the cache: no room on its disk, or not writable.

    `problem` says what; the message adds what to do. `data_cache: auto` warns with the
    problem and decodes instead; `on` raises it."""

    def __init__(self, problem: str, *, unwritable: bool = False) -> None:
        self.problem = problem
        advice = ("point cache_dir (${}) at a folder you can write" if unwritable else
                  "free some space there or point cache_dir (${}) at a larger local disk")
        super().__init__(f"{problem}; {advice.format(CACHE_DIR_VARIABLE)}")


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder on this machine: `cache_dir`, else $CARSWEEP_CACHE_DIR, else the default."""
    chosen = cache_dir or os.environ.get(CACHE_DIR_VARIABLE) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser().absolute()


def check_size(size: int) -> int:
    """The size itself, or a ValueError naming it and the valid range."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"cache size must be an int, got {type(size).__name__} {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"cache size is {size}, but must be {MIN_SIZE} <= size <= {MAX_SIZE}")
    return int(size)


def cached_rows(dataset: PreparedDataset) -> pd.DataFrame:
    """The rows a cache holds, in its order: train and val, in manifest order."""
    return dataset.rows(*CACHED_SPLITS)


def rows_checksum(rows: pd.DataFrame, size: int, bbox_crop: bool = False) -> str:
    """sha1 over the format version, size, crop flag and every row's path and sha1 (and box
    when cropping), in order."""
    digest = hashlib.sha1(f"carsweep-cache v{FORMAT_VERSION} {size} {bbox_crop}\n".encode())
    columns = ["path", "sha1"] + (BOX_COLUMNS if bbox_crop else [])
    for row in rows[columns].itertuples(index=False):
        digest.update(("\t".join(map(str, row)) + "\n").encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CachePlan:
    """One cache on this machine: where it goes, whether it is there, and whether it fits."""

    size: int
    bbox_crop: bool
    folder: Path
    count: int  # images (train+val rows)
    checksum: str
    state: str  # "fresh" or "missing"
    bytes_needed: int  # the .npy file: header + count * 3 * size * size
    bytes_free: int  # on the disk of the folder (its nearest existing parent)
    bytes_reserved: int  # kept free for everything else on that disk

    @property
    def stem(self) -> str:
        return f"{self.size}px{'-bbox' if self.bbox_crop else ''}-{self.checksum[:KEY_DIGITS]}"

    @property
    def array(self) -> Path:
        return self.folder / f"{self.stem}.u8.npy"

    @property
    def sidecar(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.stem}.lock"

    @property
    def label(self) -> str:
        """How messages name it: "400px", "400px bbox-crop"."""
        return f"{self.size}px{' bbox-crop' if self.bbox_crop else ''}"

    @property
    def has_room(self) -> bool:
        return self.state == "fresh" or self.bytes_needed + self.bytes_reserved <= self.bytes_free

    def room_problem(self) -> str | None:
        """None when it fits (or is there), else one line: what it needs, what the disk has."""
        if self.has_room:
            return None
        return (f"the {self.label} cache of {self.count:,} train+val images needs "
                f"{format_bytes(self.bytes_needed)} in {self.folder}, but that disk has "
                f"{format_bytes(self.bytes_free)} free ({format_bytes(self.bytes_reserved)} "
                "kept spare)")


def cache_plan(dataset: PreparedDataset, size: int, bbox_crop: bool = False,
               cache_dir: str | Path | None = None, *, disk=None) -> CachePlan:
    """The plan of one cache of `dataset` in `cache_dir` (resolved here; see resolve_cache_dir).

    `disk(path) -> (free bytes, total bytes)` measures the disk; default `disk_space`."""
    size = check_size(size)
    rows = cached_rows(dataset)
    folder = resolve_cache_dir(cache_dir)
    free, total = (disk or disk_space)(folder)
    checksum = rows_checksum(rows, size, bbox_crop)
    plan = CachePlan(size=size, bbox_crop=bbox_crop, folder=folder, count=len(rows),
                     checksum=checksum, state="missing",
                     bytes_needed=npy_bytes((len(rows), 3, size, size)), bytes_free=free,
                     bytes_reserved=min(RESERVE_MAX, int(total * RESERVE_FRACTION)))
    return replace(plan, state="fresh") if _is_fresh(plan) else plan


def _is_fresh(plan: CachePlan) -> bool:
    """The array is there, whole, and its sidecar records the same rows."""
    try:
        recorded = json.loads(plan.sidecar.read_text())
        whole = plan.array.stat().st_size == plan.bytes_needed
    except (OSError, json.JSONDecodeError):
        return False
    same_rows = (recorded.get("checksum"), recorded.get("count")) == (plan.checksum, plan.count)
    return whole and same_rows


def npy_bytes(shape: tuple[int, ...]) -> int:
    """Size of a uint8 .npy file of `shape`, header included (as np.lib.format writes it)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return header.tell() + math.prod(shape)


def disk_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the disk that holds `path`, or would: its nearest existing parent."""
    usage = shutil.disk_usage(nearest_existing(Path(path)))
    return usage.free, usage.total


def nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def format_bytes(count: float) -> str:
    """Decimal units, as disks are sold: 3.9 GB, 512 MB, 12 kB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def map_array(path: Path) -> np.memmap:
    """Map a uint8 .npy file read-only (the whole array, for checks and tests; training reads
    rows with `CacheRows`)."""
    return np.load(path, mmap_mode="r")


class CacheRows:
    """Rows of a cache array read with `pread` into a buffer the caller owns.

    Why not a gather from a memory map: at Stanford Cars' size (480 kB rows at 400 px) every
    process that maps the file pays a page fault per 4 kB page it touches the first time (a
    fresh trial, a fresh worker), and the gather writes into a newly allocated array that
    faults again; `pread` copies from the page cache without mapping anything, straight into
    the batch's own memory (pinned, when the batch goes to a GPU). Before reading, the kernel
    is told which rows follow (POSIX_FADV_WILLNEED), so a cache that is not in RAM is read
    from the disk with the whole batch in flight instead of one row at a time (BENCHMARKS.md,
    "Data path at Stanford Cars' size"). The file is opened lazily in each process (a pickled
    reader reopens it), so DataLoader workers each hold their own descriptor.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        mapped = map_array(self.path)  # header only: no page of the data is touched
        if mapped.dtype != np.uint8 or mapped.ndim != 4 or not mapped.flags.c_contiguous:
            raise CacheError(f"{self.path}: not a cache array (uint8, N x 3 x H x W)")
        self.shape, self.offset = tuple(mapped.shape), int(mapped.offset)
        self.row_bytes = math.prod(self.shape[1:])
        del mapped
        self._descriptor: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptor": None, "_pid": None}

    def read(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Rows `rows` (ascending) into `out`, uint8 (len(rows), 3, H, W) C-contiguous."""
        if out.shape != (len(rows), *self.shape[1:]) or not out.flags.c_contiguous:
            raise ValueError(f"out is {out.shape}, need ({len(rows)}, {self.shape[1:]}) "
                             "C-contiguous")
        descriptor = self._open()
        target = memoryview(out.reshape(-1).view(np.uint8))
        runs = _consecutive_runs(np.asarray(rows, dtype=np.int64))
        for _, count, first in runs:
            os.posix_fadvise(descriptor, self.offset + int(first) * self.row_bytes,
                             count * self.row_bytes, os.POSIX_FADV_WILLNEED)
        for start, count, first in runs:
            begin = start * self.row_bytes
            _pread_exactly(descriptor, target[begin:begin + count * self.row_bytes],
                           self.offset + int(first) * self.row_bytes, self.path)
        return out

    def _open(self) -> int:
        if self._descriptor is None or self._pid != os.getpid():
            self._descriptor = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._descriptor

    def __del__(self) -> None:
        if self._descriptor is not None and self._pid == os.getpid():
            os.close(self._descriptor)


def _consecutive_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(position in the batch, length, first row) of each run of consecutive rows."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [len(rows)]]))
    return [(int(s), int(n), int(rows[s])) for s, n in zip(starts, lengths, strict=True)]


def _pread_exactly(descriptor: int, target: memoryview, offset: int, path: Path) -> None:
    while len(target):
        done = os.preadv(descriptor, [target], offset)
        if done == 0:
            raise CacheError(f"{path}: shorter than its header says; delete it to rebuild")
        target, offset = target[done:], offset + done


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
    with _exclusive(plan.folder, plan.lock):
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
    paths = [str(dataset.image_path(p)) for p in rows["path"]]
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
            "dataset": str(Path(dataset.folder).absolute()),
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


@contextmanager
def _exclusive(folder: Path, lock_path: Path) -> Iterator[None]:
    """An advisory lock held while building, so concurrent trials build a cache only once."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115 - closed by the `with` below
    except OSError as error:
        raise CacheDiskError(f"cannot write the cache folder {folder} "
                             f"({error.strerror or error})", unwritable=True) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Shared storage ---------------------------------------------------------------------------

def file_system_of(path: str | Path, mounts: str | None = None) -> tuple[str, str]:
    """(type, mount point) of the file system that holds, or will hold, `path`, from
    /proc/mounts (or the `mounts` text given); ("", "") where there is none to read."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "", ""
    target = Path(os.path.realpath(Path(path).absolute()))  # symlinks of the existing part
    best = ("", "")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")  # /proc/mounts escapes spaces
        if _is_within(target, Path(point)) and len(point) >= len(best[1]):
            best = (fields[2], point)
    return best


def is_network_file_system(kind: str) -> bool:
    return kind in NETWORK_FILE_SYSTEMS or kind.startswith("fuse.")


def shared_storage_warning(cache_dir: str | Path,
                           shared_paths: Mapping[str, str | Path | None], *,
                           mounts: str | None = None) -> str | None:
    """One line when the cache folder is on a network file system, or inside a folder the
    caller says every node shares (`{"the experiment storage": path, ...}`); else None."""
    folder = Path(cache_dir).expanduser().absolute()
    kind, point = file_system_of(folder, mounts)
    if is_network_file_system(kind):
        where = f"is on a network file system ({kind} at {point})"
    else:
        inside = [(what, Path(path).absolute()) for what, path in shared_paths.items()
                  if path is not None and _is_within(folder, Path(path).absolute())]
        if not inside:
            return None
        what, path = inside[0]
        where = f"is inside {what} ({path}), which every node shares"
    return (f"cache folder {folder} {where}: the cache works there, but reading it over a "
            "network file system (100-200 MB/s) is no faster than decoding the JPEGs "
            f"(BENCHMARKS.md); set cache_dir (${CACHE_DIR_VARIABLE}) to a local disk of each node")


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
