"""A dataset's images in a bucket, mirrored once into the local disk of each machine that reads
them, so that no trial reads a JPEG over the network per epoch.

A prepared dataset whose `root` is a bucket URI (carsweep/data/manifest.py) has its images
read from this machine's mirror of that prefix: `PreparedDataset.image_path` answers a path
there, and `PreparedDataset.image_files(rows)` fetches whatever of those rows is not there yet.
The sweep fetches train+val on every trial node before trials start, beside its decoded caches
(carsweep/search/preflight/caches.py); analyze's retrain tasks fetch train+val+test on their
node; the driver fetches only what it reads itself (the dry step's few images, the test split
for the gallery, an export's proof images).

Where: in the node's cache folder, the one the decoded caches use when a trial names none
($CARSWEEP_CACHE_DIR, else /tmp/carsweep-cache-USER; carsweep/data/cache.py), under
`images/<scheme>/<bucket>/<prefix>/`. The decoded caches are built from these files and live
on the same local disk, which is the disk a platform engineer sizes for them (node-local NVMe,
or a Kubernetes emptyDir/ephemeral volume mounted there), so one room check can count both,
and one `rm -rf` of the cache folder clears both.

How, for each file: 16 GETs at once (storage.REQUESTS_IN_FLIGHT: each image is one GET,
latency-bound), a failed GET retried with a growing pause, its bytes checked against the
manifest's sha1 (the hash the audit took of the same bytes) before they are renamed into place
(a killed mirror leaves a hidden partial file, never a torn image at the final name). A file
already there with the right sha1 is not fetched again, so a mirror cut short resumes; the
files verified are recorded in `.carsweep-mirrored.json`, so a trial that finds its rows
recorded opens no image to check them. One process fetches at a time on a machine (a lock in
the mirror's folder, as the cache build takes one): trials that start together on a node that
joined late fetch each image once. A missing object, a sha1 that differs, a store that
refuses (no credentials, a wrong endpoint) is a MirrorError naming the object.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carsweep.config.io import atomic_write, disk_full_is_user_error
from carsweep.data.cache import (
    EPHEMERAL_NOTE,
    disk_space,
    format_bytes,
    held_alone,
    progress_text,
    reserved_bytes,
    resolve_cache_dir,
)
from carsweep.errors import UserError
from carsweep.storage import REQUESTS_IN_FLIGHT, BucketPath, StorageError

if TYPE_CHECKING:
    import pandas as pd

    from carsweep.data.manifest import PreparedDataset

ATTEMPTS = 3  # GETs of one object before its failure is the mirror's
RETRY_PAUSE_S = 0.5  # before the second GET; doubled before each next one
PROGRESS_STEPS = 10  # a progress line at about every tenth of a mirror
VERIFIED_FILE = ".carsweep-mirrored.json"  # relative path -> sha1 of every file checked
LOCK_FILE = ".carsweep-mirror.lock"  # held while fetching


class MirrorError(UserError):
    """An image the mirror cannot bring here as the manifest says it is."""


def mirror_folder(root: BucketPath) -> Path:
    """This machine's mirror of a bucket folder of images (the module docstring says why
    there)."""
    return resolve_cache_dir() / "images" / root.scheme / root.fs_path


@dataclass(frozen=True)
class MirrorPlan:
    """What mirroring some rows here takes: how many files and bytes are still to fetch, and
    whether the disk has room for them."""

    folder: Path
    count: int  # the rows' images
    to_fetch: int  # of them, not yet verified here
    bytes_needed: int  # their sizes in the bucket
    bytes_free: int
    bytes_reserved: int  # kept free for everything else on that disk, as for a cache

    @property
    def has_room(self) -> bool:
        return self.bytes_needed + self.bytes_reserved <= self.bytes_free

    def room_problem(self) -> str | None:
        if self.has_room:
            return None
        return (f"the image mirror needs {format_bytes(self.bytes_needed)} for "
                f"{self.to_fetch:,} images in {self.folder}, but that disk has "
                f"{format_bytes(self.bytes_free)} free ({format_bytes(self.bytes_reserved)} "
                f"kept spare){EPHEMERAL_NOTE}; free some space there or point "
                "$CARSWEEP_CACHE_DIR at a larger local disk")


def mirror_plan(dataset: PreparedDataset, rows: pd.DataFrame, *, disk=None) -> MirrorPlan:
    """The plan of mirroring `rows` of a dataset whose root is a bucket (one LIST of the root
    for the sizes). `disk(path) -> (free, total)` measures the disk; default `disk_space`."""
    folder = mirror_folder(dataset.root)
    pending = _unverified(folder, rows)
    sizes = dataset.root.listed().files() if pending else {}
    free, total = (disk or disk_space)(folder)
    return MirrorPlan(folder=folder, count=len(rows), to_fetch=len(pending),
                      bytes_needed=sum(sizes.get(path, 0) for path in pending),
                      bytes_free=free, bytes_reserved=reserved_bytes(total))


def mirror_lines(dataset: PreparedDataset, rows: pd.DataFrame) -> Iterator[str]:
    """Mirror `rows` here, saying how it goes: what is fetched from where, about every tenth
    ("3,264/8,144 images (40 %), 41 s"), and the end."""
    folder = mirror_folder(dataset.root)
    started, shown = time.monotonic(), 0
    steps = mirror_steps(dataset, rows)
    here, total, _ = last = next(steps)
    if here < total:
        yield (f"mirroring {total - here:,} of {total:,} images from {dataset.root} into "
               f"{folder} (a file there already with its sha1 is kept)")
    for last in steps:
        done, total, _ = last
        step = done * PROGRESS_STEPS // max(1, total)
        if step > shown and done < total:
            shown = step
            yield progress_text(done, total, started)
    fetched = last[2]
    how = (f"fetched {fetched:,}, kept {total - fetched:,}" if here < total
           else "all there")
    yield (f"{how}: {total:,} images in {folder}, each as its sha1 says, "
           f"in {time.monotonic() - started:.0f} s")


def mirror_steps(dataset: PreparedDataset, rows: pd.DataFrame, *,
                 threads: int = REQUESTS_IN_FLIGHT) -> Iterator[tuple[int, int, int]]:
    """Mirror `rows` here, yielding (images here, images wanted, images fetched) as files
    arrive; the first failure is a MirrorError (the other requests are cancelled, nothing is
    recorded)."""
    folder = mirror_folder(dataset.root)
    pending = _unverified(folder, rows)
    total = len(set(rows["path"]))
    done, fetched = total - len(pending), 0
    yield done, total, fetched
    if not pending:
        return
    # One fetcher per machine (trials starting together on a node that joined late): the
    # others wait, then find the files it verified.
    with held_alone(folder, folder / LOCK_FILE):
        pending = _unverified(folder, rows)
        done = total - len(pending)
        yield from _fetch(dataset.root, folder, pending, (done, total), threads)
        _record_verified(folder, pending)


def _fetch(root: BucketPath, folder: Path, pending: dict[str, str], progress: tuple[int, int],
           threads: int) -> Iterator[tuple[int, int, int]]:
    """`pending` (relative path -> sha1) from `root` into `folder`, yielding progress as
    mirror_steps does."""
    (done, total), fetched = progress, 0
    with ThreadPoolExecutor(threads) as pool:
        futures = {pool.submit(fetch_checked, root / path, folder / path, sha1)
                   for path, sha1 in pending.items()}
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                pool.shutdown(cancel_futures=True)
                raise failed.exception()
            done += len(finished)
            fetched += sum(future.result() for future in finished)
            yield done, total, fetched


def fetch_checked(remote: BucketPath, local: Path, sha1: str) -> bool:
    """`remote` into `local` unless it is there already with the bytes `sha1` names (then
    False); a GET that fails is tried again, bytes that differ from `sha1` are never renamed
    into place."""
    if sha1 and _sha1_of(local) == sha1:
        return False
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with disk_full_is_user_error(local):  # a disk that filled since the room check
                remote.download_to(local, check=lambda data: _check_sha1(remote, data, sha1))
            return True
        except FileNotFoundError:
            raise MirrorError(f"{remote}: no such object, but the manifest lists it; upload "
                              "it again or prepare the dataset again") from None
        except StorageError as error:
            if attempt == ATTEMPTS:
                raise MirrorError(f"{error} (after {ATTEMPTS} tries)") from None
            time.sleep(RETRY_PAUSE_S * 2 ** (attempt - 1))


def _check_sha1(remote: BucketPath, data: bytes, sha1: str) -> None:
    found = hashlib.sha1(data).hexdigest()
    if sha1 and found != sha1:
        raise MirrorError(f"{remote}: its bytes have sha1 {found[:12]}, but the manifest says "
                          f"{sha1[:12]}: the object changed since `carsweep prepare` read it; "
                          "put it back, or prepare the dataset again")


def _sha1_of(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _unverified(folder: Path, rows: pd.DataFrame) -> dict[str, str]:
    """relative path -> sha1 of the rows whose file this machine has not verified yet."""
    verified = _verified(folder)
    wanted = dict(zip(rows["path"], rows["sha1"].fillna("").astype(str), strict=True))
    return {path: sha1 for path, sha1 in wanted.items()
            if not sha1 or verified.get(path) != sha1}


def _verified(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _record_verified(folder: Path, fetched: dict[str, str]) -> None:
    """Add `fetched` to the record (read again now: another process may have added some)."""
    with atomic_write(folder / VERIFIED_FILE, "w") as out:
        json.dump(_verified(folder) | fetched, out)


def bring_here(dataset: PreparedDataset, rows: pd.DataFrame,
               say: Callable[[str], None] | None = None) -> None:
    """Mirror `rows` of a dataset whose images are in a bucket (a no-op for a local one),
    each line of progress to `say`."""
    if not isinstance(dataset.root, BucketPath):
        return
    for line in mirror_lines(dataset, rows):
        if say is not None:
            say(f"mirror: {line}")
