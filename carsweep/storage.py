"""Where an experiment lives: a folder on this machine, or a folder in a bucket.

`location(text)` is the one way to read a place the user gave: a local path stays a `Path`;
`s3://BUCKET/PREFIX` (AWS S3, or any S3-compatible store: MinIO, Ceph, R2...), and
`gs://BUCKET/PREFIX` become a `BucketPath`, which answers the few `pathlib.Path` methods the
experiment's readers and writers use (`/`, `name`, `parent`, `is_file`, `is_dir`, `exists`,
`read_text`, `write_text`, ...), so the code that reads an experiment is the same for both.

Every byte to and from a bucket goes through `pyarrow.fs`, for three reasons:
- it is the layer Ray Tune itself stores experiments through (`RunConfig(storage_path=URI)`
  is resolved by `pyarrow.fs.FileSystem.from_uri` on every node, ray/train/_internal/
  storage.py), so carsweep and Ray read one URI the same way, endpoint options included;
- it is installed with Ray already: no second client (boto3, s3fs/gcsfs) with its own
  configuration, versions and credential lookup;
- its S3 and GCS clients are the clouds' own C++ SDKs, which find credentials where a
  platform engineer puts them: AWS_* variables, ~/.aws, IRSA's web identity token, an
  instance role (S3); application default credentials, Workload Identity (GCS). carsweep
  never handles a secret: nothing goes into Ray's runtime_env, which Ray's dashboard shows.

An S3-compatible endpoint is named by AWS_ENDPOINT_URL (read by the SDK on every node), or in
the URI itself as pyarrow's `from_uri` reads it: `s3://bucket/prefix?endpoint_override=
host:9000&scheme=http`. The query stays with every path below it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from carsweep.errors import UserError

if TYPE_CHECKING:  # pyarrow is imported on first use: local experiments never need it
    from pyarrow import fs as pafs

SCHEMES = ("s3", "gs", "gcs")  # gcs:// is pyarrow's other name for gs://
# Requests a reader of many small objects keeps in flight: each waits on a round trip, not on
# bandwidth or CPU.
REQUESTS_IN_FLIGHT = 16


class StorageError(UserError, OSError):
    """A bucket that cannot be reached, read or written: one line for the CLI (a UserError),
    and an OSError for code that handles a folder it cannot write (the pre-flight probes)."""


def location(place: str | os.PathLike | BucketPath) -> Path | BucketPath:
    """A folder or file the user named: a Path, or a BucketPath for a bucket URI."""
    if isinstance(place, BucketPath | Path):
        return place
    text = os.fspath(place)
    if "://" not in text:
        return Path(text).expanduser()
    scheme = text.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise UserError(f"{text}: {scheme}:// is not a storage carsweep knows; give a folder, "
                        "s3://BUCKET/PREFIX (S3 and S3-compatible stores) or gs://BUCKET/PREFIX")
    return BucketPath.from_uri(text)


def is_bucket(place: Any) -> bool:
    return isinstance(place, BucketPath)


def local_folder_for(bucket_folder: BucketPath) -> Path:
    """This machine's own folder for what it keeps of a bucket folder (the driver's study
    journal, a mirror for TensorBoard, downloaded checkpoints): under $CARSWEEP_STATE_DIR, else
    ~/.cache/carsweep, at the bucket's path."""
    root = os.environ.get("CARSWEEP_STATE_DIR") or "~/.cache/carsweep"
    return Path(root).expanduser() / "buckets" / bucket_folder.scheme / bucket_folder.fs_path


@dataclass(frozen=True)
class _Listing:
    """Every file under a folder as one recursive listing saw it (one LIST request per 1,000
    objects), so a reader's many existence checks cost no request each."""

    root: str
    files: dict[str, int]  # fs path -> size
    folders: frozenset[str]
    modified: dict[str, datetime] = field(default_factory=dict)  # fs path -> LastModified


@dataclass(frozen=True, eq=False)
class BucketPath:
    """A file or folder in a bucket, with the pathlib methods carsweep reads and writes
    experiments through. `str()` is its URI. It has no `__fspath__`: code that would hand it
    to `open()` fails loudly instead of writing to a local folder named `s3:`."""

    filesystem: pafs.FileSystem = field(repr=False)
    scheme: str
    fs_path: str  # bucket/key, as pyarrow names it
    query: str = ""  # the URI's options (endpoint_override=...), kept for every child
    listing: _Listing | None = field(default=None, repr=False)

    @classmethod
    def from_uri(cls, uri: str) -> BucketPath:
        from pyarrow import fs as pafs

        scheme, rest = uri.split("://", 1)
        query = rest.split("?", 1)[1] if "?" in rest else ""
        try:
            filesystem, fs_path = pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as error:
            raise StorageError(f"{uri}: {_one_line(error)}") from None
        if not fs_path.strip("/"):
            raise UserError(f"{uri}: name a bucket, e.g. {scheme}://BUCKET/results")
        return cls(filesystem, scheme.lower(), fs_path.rstrip("/"), query)

    @classmethod
    def on(cls, filesystem: pafs.FileSystem, fs_path: str) -> BucketPath:
        """A path in a bucket filesystem already made (the one a Ray checkpoint carries):
        its endpoint options are in the filesystem, so its URI has none."""
        return cls(filesystem, filesystem.type_name, fs_path.rstrip("/"))

    # Names -----------------------------------------------------------------------------------

    def __str__(self) -> str:
        return f"{self.scheme}://{self.fs_path}" + (f"?{self.query}" if self.query else "")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str | os.PathLike) -> BucketPath:
        return self._at(str(PurePosixPath(self.fs_path, os.fspath(part))))

    def joinpath(self, *parts: str) -> BucketPath:
        return self._at(str(PurePosixPath(self.fs_path, *parts)))

    @property
    def name(self) -> str:
        return PurePosixPath(self.fs_path).name

    @property
    def parent(self) -> BucketPath:
        return self._at(str(PurePosixPath(self.fs_path).parent))

    @property
    def bucket(self) -> str:
        return self.fs_path.split("/", 1)[0]

    def expanduser(self) -> BucketPath:
        return self

    def resolve(self) -> BucketPath:
        return self

    def _at(self, fs_path: str) -> BucketPath:
        return BucketPath(self.filesystem, self.scheme, fs_path, self.query, self.listing)

    # Existence ---------------------------------------------------------------------------------

    def listed(self) -> BucketPath:
        """This folder with a listing of everything under it, shared by every path made from
        it: existence checks below it are answered from the listing (a snapshot: a file
        written since is not seen)."""
        from pyarrow import fs as pafs

        with self._talking("list"):
            infos = self.filesystem.get_file_info(
                pafs.FileSelector(self.fs_path, recursive=True, allow_not_found=True))
        infos = [info for info in infos if info.type == pafs.FileType.File]
        files = {info.path: info.size for info in infos}
        folders = {str(parent) for path in files for parent in PurePosixPath(path).parents}
        modified = {info.path: info.mtime for info in infos if info.mtime is not None}
        return BucketPath(self.filesystem, self.scheme, self.fs_path, self.query,
                          _Listing(self.fs_path, files, frozenset(folders), modified))

    def is_file(self) -> bool:
        listing = self._listing()
        if listing is not None:
            return self.fs_path in listing.files
        return self._info().type.name == "File"

    def is_dir(self) -> bool:
        """A folder in a bucket is a prefix with objects under it (or a folder marker)."""
        listing = self._listing()
        if listing is not None:
            return self.fs_path in listing.folders
        return self._info().type.name == "Directory"

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def size(self) -> int:
        listing = self._listing()
        if listing is not None and self.fs_path in listing.files:
            return listing.files[self.fs_path]
        return self._info().size

    def modified(self) -> datetime:
        """When this file was last written, as the store says (S3's LastModified, UTC; to the
        second on most stores)."""
        listing = self._listing()
        if listing is not None and self.fs_path in listing.modified:
            return listing.modified[self.fs_path]
        return self._info().mtime

    def files(self) -> dict[str, int]:
        """Every file under this folder: its path relative to it -> its size."""
        listing = self._listing() or self.listed().listing
        prefix = f"{self.fs_path}/"
        return {path.removeprefix(prefix): size for path, size in listing.files.items()
                if path.startswith(prefix)}

    def iterdir(self) -> Iterator[BucketPath]:
        """The files and folders right under this folder, sorted by name; they share the
        listing (this folder's, else one made now), so asking which is a folder costs nothing."""
        listed = self if self._listing() is not None else self.listed()
        prefix = f"{self.fs_path}/"
        below = (*listed.listing.files, *listed.listing.folders)
        names = {path.removeprefix(prefix).split("/", 1)[0] for path in below
                 if path.startswith(prefix)}
        return (listed / name for name in sorted(names))

    def _listing(self) -> _Listing | None:
        listing = self.listing
        inside = listing is not None and (self.fs_path == listing.root
                                          or self.fs_path.startswith(f"{listing.root}/"))
        return listing if inside else None

    def _info(self):
        with self._talking("look up"):
            return self.filesystem.get_file_info(self.fs_path)

    # Reading and writing -------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        with self._talking("read"), self.filesystem.open_input_stream(self.fs_path) as stream:
            return stream.read()

    def read_tail(self, nbytes: int) -> bytes:
        """The last `nbytes` of this file (all of a smaller one): pyarrow's HEAD for its
        size, then one ranged GET."""
        with self._talking("read"), self.filesystem.open_input_file(self.fs_path) as stream:
            size = stream.size()
            return stream.read_at(min(nbytes, size), max(0, size - nbytes))

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> None:
        """One PUT: readers see the old object or the new one, never half of one."""
        with self._talking("write"), self.filesystem.open_output_stream(self.fs_path) as stream:
            stream.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a bucket's folders are the prefixes of its objects."""

    def remove_tree(self) -> None:
        with self._talking("delete"):
            self.filesystem.delete_dir_contents(self.fs_path, missing_dir_ok=True)

    def unlink(self, missing_ok: bool = False) -> None:
        with self._talking("delete"):
            try:
                self.filesystem.delete_file(self.fs_path)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def download_to(self, local: Path, *, check: Callable[[bytes], None] | None = None) -> None:
        """This file to `local`, whole: written beside it, then renamed into place; `check`
        sees the bytes first, and what it raises leaves `local` as it was."""
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{secrets.token_hex(4)}.part")
        try:
            data = self.read_bytes()
            if check is not None:
                check(data)
            partial.write_bytes(data)
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)

    def upload_tree(self, local: Path) -> None:
        """Every file of the local folder to this folder (the same relative paths),
        REQUESTS_IN_FLIGHT at a time."""
        def upload(file: Path) -> None:
            (self / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())

        in_parallel(upload, sorted(p for p in Path(local).rglob("*") if p.is_file()))

    @contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """The store's refusals (no credentials, a wrong endpoint, a missing bucket, access
        denied) as one line naming this URI; a missing file stays a FileNotFoundError."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as error:
            raise StorageError(f"{self}: cannot {what} it: {_one_line(error)}; check the "
                               "bucket, the credentials (AWS_* / GOOGLE_APPLICATION_CREDENTIALS"
                               ", the instance role) and the endpoint (AWS_ENDPOINT_URL)"
                               ) from None


def place_in(filesystem: pafs.FileSystem, fs_path: str) -> Path | BucketPath:
    """A path in a pyarrow filesystem (where Ray keeps a trial, a checkpoint) as carsweep names
    places: a local Path, or a BucketPath."""
    from pyarrow import fs as pafs

    if isinstance(filesystem, pafs.LocalFileSystem):
        return Path(fs_path)
    return BucketPath.on(filesystem, fs_path)


def local_copy(folder: Path | BucketPath) -> Path:
    """A folder to hand to code that needs local files (torch.load, TensorBoard): a local
    folder itself; a bucket folder mirrored into its `local_folder_for`."""
    if not is_bucket(folder):
        return folder
    return mirror(folder, local_folder_for(folder))


def mirror(bucket_folder: BucketPath, local: Path, *, wanted=lambda relative: True) -> Path:
    """Bring `local` in step with the bucket folder: each wanted file whose size differs
    (or that is missing) is downloaded; files already the same size are left as they are.
    Returns `local`."""
    stale = [relative for relative, size in bucket_folder.files().items()
             if wanted(relative) and not ((local / relative).is_file()
                                          and (local / relative).stat().st_size == size)]
    in_parallel(lambda relative: (bucket_folder / relative).download_to(local / relative),
                stale)
    local.mkdir(parents=True, exist_ok=True)
    return local


def in_parallel(request: Callable[[Any], Any], items: Iterable) -> list:
    """[request(item) for item in items], REQUESTS_IN_FLIGHT at a time (each waits on a
    round trip to the store, not on the CPU); an error is raised once every request ended."""
    with ThreadPoolExecutor(REQUESTS_IN_FLIGHT) as pool:
        return list(pool.map(request, items))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
