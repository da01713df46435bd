"""Decode once: a prepared dataset's train+val images, resized, as one memory-mapped uint8 array
on the local disk of the node that trains. This module says what a cache is and where: its
files, its key, whether it is there, whether the disk has room (`cache_plan`), and when its
folder is on shared storage; carsweep/data/cache_build.py builds one, cache_read.py reads one.

A trial that decodes JPEGs every epoch is limited by the CPU (about 150-300 images/s per core
with resize), while a GPU trains ResNet-18 at thousands. So each node decodes every train and
val image once per (input size, bbox crop), in parallel over its cores, into a folder of its
own local disk, `cache_dir` (TrialConfig; default $CARSWEEP_CACHE_DIR, else
/tmp/carsweep-cache-USER, resolved on the node itself, so every node uses its own disk; per
user, so on a node that several users share each one's trials build and read their own
caches, where one user's folder would refuse the next user's files):

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
`rm -rf /tmp/carsweep-cache-$USER` (or your cache_dir) while no trial runs there.

A cache on a network file system, or under a folder every node shares, still works, but is no
faster than decoding (BENCHMARKS.md: 100-200 MB/s): `shared_storage_warning` says so.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from carsweep.data.manifest import BOX_COLUMNS, PreparedDataset
from carsweep.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

CACHE_DIR_VARIABLE = "CARSWEEP_CACHE_DIR"
DEFAULT_CACHE_PREFIX = "/tmp/carsweep-cache-"
CACHED_SPLITS = ("train", "val")
FORMAT_VERSION = 2
KEY_DIGITS = 16
MIN_SIZE, MAX_SIZE = 16, 2048
RESERVE_FRACTION, RESERVE_MAX = 0.05, 2**30
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
    """The cache folder on this machine: `cache_dir`, else $CARSWEEP_CACHE_DIR, else this
    user's default."""
    chosen = cache_dir or os.environ.get(CACHE_DIR_VARIABLE) or default_cache_dir()
    return Path(chosen).expanduser().absolute()


def default_cache_dir() -> Path:
    """/tmp/carsweep-cache-USER (the user id where the user has no name, as in a container)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Path(f"{DEFAULT_CACHE_PREFIX}{user}")


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
    bytes_beside: int = 0  # taken first on that disk by the image mirror and other caches

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
        return self.state == "fresh" or (self.bytes_needed + self.bytes_reserved
                                         + self.bytes_beside <= self.bytes_free)

    def room_problem(self) -> str | None:
        """None when it fits (or is there), else one line: what it needs, what the disk has."""
        if self.has_room:
            return None
        beside = (f", {format_bytes(self.bytes_beside)} for the image mirror and other caches"
                  if self.bytes_beside else "")
        return (f"the {self.label} cache of {self.count:,} train+val images needs "
                f"{format_bytes(self.bytes_needed)} in {self.folder}, but that disk has "
                f"{format_bytes(self.bytes_free)} free ({format_bytes(self.bytes_reserved)} "
                f"kept spare{beside}){EPHEMERAL_NOTE}")


def cache_plan(dataset: PreparedDataset, size: int, bbox_crop: bool = False,
               cache_dir: str | Path | None = None, *, disk=None, beside: int = 0) -> CachePlan:
    """The plan of one cache of `dataset` in `cache_dir` (resolved here; see resolve_cache_dir).

    `disk(path) -> (free bytes, total bytes)` measures the disk; default `disk_space`.
    `beside`: bytes that other things planned on that disk (the image mirror, other caches)
    will take before this cache, which its room must leave them."""
    size = check_size(size)
    rows = cached_rows(dataset)
    folder = resolve_cache_dir(cache_dir)
    free, total = (disk or disk_space)(folder)
    checksum = rows_checksum(rows, size, bbox_crop)
    plan = CachePlan(size=size, bbox_crop=bbox_crop, folder=folder, count=len(rows),
                     checksum=checksum, state="missing",
                     bytes_needed=npy_bytes((len(rows), 3, size, size)), bytes_free=free,
                     bytes_reserved=reserved_bytes(total), bytes_beside=beside)
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


# Said by every room check: a pod's ephemeral-storage limit is enforced by the kubelet
# (evicting the pod), while statvfs only sees the node's disk.
EPHEMERAL_NOTE = ("; a container's ephemeral-storage limit (Kubernetes) is not visible to this "
                  "check, which sees only the disk")


def same_disk(one: Path, other: Path) -> bool:
    """Whether two folders (or where they would be made) are on one file system."""
    return nearest_existing(one).stat().st_dev == nearest_existing(other).stat().st_dev


def reserved_bytes(total: int) -> int:
    """What a cache or the image mirror leaves free on a disk of `total` bytes."""
    return min(RESERVE_MAX, int(total * RESERVE_FRACTION))


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


def progress_text(done: int, total: int, started: float) -> str:
    """"3,264/8,144 images (40 %), 41 s": a cache build's or a mirror's line, `started` being
    its time.monotonic() at the start."""
    seconds = time.monotonic() - started
    return f"{done:,}/{total:,} images ({100 * done // total} %), {seconds:.0f} s"


def format_bytes(count: float) -> str:
    """Decimal units, as disks are sold: 3.9 GB, 512 MB, 12 kB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


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


@contextmanager
def held_alone(folder: Path, lock_path: Path) -> Iterator[None]:
    """An advisory lock on `lock_path` (made in `folder`) held for the block: concurrent
    trials on a node build a cache, or fetch a mirror, once; the others wait, then find it."""
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
