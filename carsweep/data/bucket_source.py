"""`prepare` of a source or into a dataset in a bucket: stage the source here, upload the result.

The readers (the devkit's .mat files through scipy, the CSVs, the folder walks) and the audit
(PIL decodes every image, hashes its bytes) read local files, and they read every byte of the
source anyway; so a source in a bucket is first copied whole into this machine's folder for it
(`local_folder_for`: $CARSWEEP_STATE_DIR/buckets/s3/BUCKET/PREFIX, else ~/.cache/carsweep/...),
with parallel downloads, and the existing readers and audit run on that copy unchanged. The
copy is kept: a second prepare of the same source (another seed, a fix after a refusal)
downloads only the objects that changed (another size or LastModified) and deletes the local
files whose objects are gone, so the staged copy is always the prefix as it is now.

The dataset for a bucket is built in a local temporary folder and uploaded when it is whole,
dataset.json last: a reader sees the old dataset, no dataset, or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from carsweep.data.manifest import INFO_FILE
from carsweep.errors import UserError
from carsweep.storage import BucketPath, in_parallel, local_folder_for


def stage_source(source: BucketPath, *, say: Callable[[str], None]) -> Path:
    """Every object under `source`, copied into this machine's folder for it; returns it."""
    listed = source.listed()
    objects = {relative: (size, listed.listing.modified.get(f"{source.fs_path}/{relative}"))
               for relative, size in listed.files().items()}
    if not objects:
        raise UserError(_nothing_there(source))
    local = local_folder_for(source)
    stale = [relative for relative, (size, modified) in objects.items()
             if not _same(local / relative, size, modified)]
    _remove_files_not_in(local, set(objects))
    say(f"staging {source} in {local}: {len(objects):,} files, {_megabytes(objects)} "
        f"({len(stale):,} to download, {len(objects) - len(stale):,} already there)")
    in_parallel(lambda relative: _download(source / relative, local / relative,
                                           objects[relative][1]), stale)
    return local


def check_bucket_out(out: BucketPath, *, force: bool) -> None:
    """Before any work: `out` takes an object (one written and deleted), and holds nothing
    unless `force` (which replaces what is there)."""
    probe = out / f".carsweep-probe-{os.urandom(4).hex()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as error:  # a StorageError names the URI and what the store said
        raise UserError(f"--out {out} is not writable: {error}") from None
    held = out.files()
    if held and not force:
        what = "a prepared dataset" if INFO_FILE in held else f"{len(held)} object(s)"
        raise UserError(f"--out {out} already holds {what}; pass --force to replace it, or "
                        "choose another prefix")


@contextmanager
def building_for_bucket(out: BucketPath) -> Iterator[Path]:
    """A local temporary folder to build the dataset in; uploaded to `out` if the body
    succeeds, removed in every case."""
    with tempfile.TemporaryDirectory(prefix="carsweep-prepare-") as temporary:
        yield Path(temporary)
        upload_dataset(Path(temporary), out)


def upload_dataset(built: Path, out: BucketPath) -> None:
    """Replace what `out` holds by the files of `built`: its dataset.json deleted first and
    the new one written last, so no reader takes a half-written dataset for a whole one."""
    (out / INFO_FILE).unlink(missing_ok=True)
    out.remove_tree()
    files = sorted(p for p in built.rglob("*") if p.is_file())
    for file in sorted(files, key=lambda p: p.name == INFO_FILE):
        (out / file.relative_to(built).as_posix()).write_bytes(file.read_bytes())


def same_place_or_above(out: BucketPath, source: BucketPath) -> bool:
    """`out` is `source` or a prefix holding it (replacing it would delete the images)."""
    return (out.filesystem.type_name == source.filesystem.type_name
            and (source.fs_path == out.fs_path or source.fs_path.startswith(f"{out.fs_path}/")))


def _nothing_there(source: BucketPath) -> str:
    bucket = source.filesystem.get_file_info(source.bucket)
    if bucket.type.name == "NotFound":
        return (f"{source}: the bucket {source.bucket} does not exist (or these credentials "
                "cannot see it); check the URI, the credentials and the endpoint "
                "(AWS_ENDPOINT_URL)")
    return (f"{source}: no such source prefix (no object under it); expected a dataset "
            "source uploaded there in one of the layouts devkit, class-csv, imagefolder")


def _same(local: Path, size: int, modified) -> bool:
    """The staged file is the object: the same size, and the object's LastModified as mtime
    (an object written again gets a new LastModified, even with the same size)."""
    try:
        stat = local.stat()
    except OSError:
        return False
    return stat.st_size == size and modified is not None and stat.st_mtime == modified.timestamp()


def _download(remote: BucketPath, local: Path, modified) -> None:
    remote.download_to(local)
    if modified is not None:
        os.utime(local, (modified.timestamp(), modified.timestamp()))


def _remove_files_not_in(local: Path, wanted: set[str]) -> None:
    """Delete staged files whose objects are gone (an image deleted from the bucket must not
    be indexed again), and partial downloads a killed prepare left."""
    if not local.is_dir():
        return
    for file in local.rglob("*"):
        if file.is_file() and file.relative_to(local).as_posix() not in wanted:
            file.unlink()


def _megabytes(objects: dict) -> str:
    return f"{sum(size for size, _ in objects.values()) / 1e6:,.1f} MB"
