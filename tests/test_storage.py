"""carsweep.storage: a folder or a bucket URI, read and written through pyarrow.fs, against an
S3-compatible server on 127.0.0.1 (tests/bucket_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from carsweep.errors import UserError
from carsweep.storage import BucketPath, StorageError, location, mirror


def test_a_local_path_stays_a_path_and_a_bucket_uri_becomes_a_bucket_path(s3_bucket):
    assert location("results/demo") == Path("results/demo")
    assert location("~/x") == Path("~/x").expanduser()
    bucket = location(f"{s3_bucket}/results/")
    assert isinstance(bucket, BucketPath)
    assert str(bucket) == f"{s3_bucket}/results"
    assert str(bucket / "demo" / "sweep.yaml") == f"{s3_bucket}/results/demo/sweep.yaml"
    assert bucket.parent.name == s3_bucket.removeprefix("s3://")
    assert (bucket / "demo").name == "demo"


def test_an_unknown_scheme_or_a_uri_without_bucket_is_one_line():
    with pytest.raises(UserError, match=r"^ftp://h/x: ftp:// is not a storage carsweep knows; "
                       r"give a folder, s3://BUCKET/PREFIX"):
        location("ftp://h/x")
    with pytest.raises(UserError, match=r"^s3://: name a bucket"):
        location("s3://")


def test_the_endpoint_option_of_the_uri_stays_with_every_child(bucket_server, s3_bucket,
                                                                monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    host = bucket_server.endpoint.removeprefix("http://")
    uri = f"{s3_bucket}/results?endpoint_override={host}&scheme=http"
    child = location(uri) / "demo" / "a.txt"
    assert str(child) == f"{s3_bucket}/results/demo/a.txt?endpoint_override={host}&scheme=http"
    child.write_text("through the URI's endpoint")
    assert location(str(child)).read_text() == "through the URI's endpoint"


def test_files_are_written_read_listed_and_mirrored(s3_bucket, tmp_path):
    folder = location(f"{s3_bucket}/exp")
    (folder / "sweep.yaml").write_text("name: exp\n")
    (folder / "trial_a" / "result.json").write_bytes(b'{"epoch": 1}\n')
    assert (folder / "sweep.yaml").read_text() == "name: exp\n"
    assert (folder / "sweep.yaml").is_file()
    assert not (folder / "sweep.yaml").is_dir()
    assert (folder / "trial_a").is_dir()
    assert not (folder / "trial_a").is_file()
    assert not (folder / "nothing").exists()
    listed = folder.listed()
    (folder / "later.txt").write_text("after the listing")
    assert (listed / "trial_a" / "result.json").is_file()
    assert not (listed / "later.txt").is_file()  # a snapshot
    assert folder.files() == {"sweep.yaml": 10, "trial_a/result.json": 13, "later.txt": 17}
    local = mirror(folder, tmp_path / "copy", wanted=lambda relative: relative != "later.txt")
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [
        "sweep.yaml", "trial_a/result.json"]
    with pytest.raises(FileNotFoundError):
        (folder / "nothing").read_text()


def test_a_folders_entries_come_from_one_listing(s3_bucket):
    trial = location(f"{s3_bucket}/exp/trial_a")
    (trial / "result.json").write_text("{}\n")
    (trial / "checkpoint_000000" / "checkpoint.pt").write_bytes(b"x")
    (trial / "checkpoint_000001" / "deeper" / "file").write_bytes(b"x")
    entries = list(trial.iterdir())
    (trial / "checkpoint_000002" / "checkpoint.pt").write_bytes(b"x")  # after the listing
    assert [entry.name for entry in entries] == [
        "checkpoint_000000", "checkpoint_000001", "result.json"]
    assert [entry.is_dir() for entry in entries] == [True, True, False]
    assert not (entries[0].parent / "checkpoint_000002").exists()  # the listing's answer
    # A path in a filesystem already made (a Ray checkpoint's) is the same path.
    assert BucketPath.on(trial.filesystem, f"{trial.fs_path}/") == trial


def test_a_missing_bucket_is_one_line_naming_the_uri(s3_bucket):
    missing = location(f"{s3_bucket}-missing/exp/sweep.yaml")
    with pytest.raises(StorageError, match=rf"^{s3_bucket}-missing/exp/sweep.yaml: cannot write "
                       "it: .*check the bucket, the credentials"):
        missing.write_text("x")


def test_a_storage_error_is_an_os_error_too():
    assert issubclass(StorageError, OSError)
    assert issubclass(StorageError, UserError)
