"""A dataset's images in a bucket, mirrored into this machine's cache folder
(carsweep/data/mirror.py), against the S3-compatible server on 127.0.0.1: every byte as the
manifest's sha1 says, resumed where a mirror stopped, a failed GET tried again; a missing
object, other bytes, a store that keeps refusing: one line naming the object, nothing torn."""

from __future__ import annotations

import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from bucket_server import create_bucket

from carsweep.data import mirror
from carsweep.data.cache import cache_plan
from carsweep.data.cache_build import build_cache
from carsweep.data.manifest import load_dataset
from carsweep.data.mirror import (
    LOCK_FILE,
    VERIFIED_FILE,
    MirrorError,
    mirror_folder,
    mirror_lines,
    mirror_plan,
)
from carsweep.storage import BucketPath, StorageError, location

TRAIN_VAL = 4 * (18 + 6)  # the shared synthetic dataset: 4 classes, 18 train + 6 val each


@pytest.fixture(scope="module")
def dataset_uri(bucket_server, synthetic_source, prepared_dataset) -> str:
    """The shared prepared dataset in a bucket of this module, its `root` the source's URI
    beside it (uploaded once: a test that changes an object puts it back)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in bucket_server.environment().items():
            patch.setenv(key, value)
        name = f"carsweep-{secrets.token_hex(6)}"
        create_bucket(bucket_server, name)
        source, data = location(f"s3://{name}/source"), location(f"s3://{name}/data")
        source.upload_tree(synthetic_source)
        data.upload_tree(prepared_dataset)
        info = json.loads((prepared_dataset / "dataset.json").read_text())
        (data / "dataset.json").write_text(json.dumps({**info, "root": str(source)}))
    return str(data)


@pytest.fixture
def bucket_dataset(dataset_uri, bucket_server, tmp_path, monkeypatch):
    """That dataset, loaded with the server's AWS_* variables and this test's own cache
    folder (where the mirror goes)."""
    for key, value in bucket_server.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CARSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    return load_dataset(dataset_uri)


@pytest.fixture
def gets(monkeypatch) -> list[str]:
    """The URI of every object read from now on, in order."""
    read = BucketPath.read_bytes
    seen: list[str] = []

    def counted(self):
        seen.append(str(self))
        return read(self)

    monkeypatch.setattr(BucketPath, "read_bytes", counted)
    return seen


def train_val(dataset):
    return dataset.rows("train", "val")


def mirrored_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_train_val_is_mirrored_as_the_source_has_it_and_a_second_mirror_fetches_nothing(
        bucket_dataset, synthetic_source, tmp_path, gets):
    rows = train_val(bucket_dataset)
    folder = mirror_folder(bucket_dataset.root)
    assert folder == tmp_path / "cache/images/s3" / bucket_dataset.root.fs_path
    lines = list(mirror_lines(bucket_dataset, rows))
    assert lines[0] == (f"mirroring {TRAIN_VAL} of {TRAIN_VAL} images from "
                        f"{bucket_dataset.root} into {folder} (a file there already with its "
                        "sha1 is kept)")
    progress = [re.fullmatch(rf"(\d+)/{TRAIN_VAL} images \((\d+) %\), \d+ s", line)
                for line in lines[1:-1]]
    assert progress, lines  # at about every tenth, as files arrive
    assert all(progress), lines
    counts = [int(found[1]) for found in progress]
    assert counts == sorted(set(counts))
    assert counts[-1] < TRAIN_VAL
    assert [int(found[2]) for found in progress] == [100 * n // TRAIN_VAL for n in counts]
    assert lines[-1].startswith(f"fetched {TRAIN_VAL}, kept 0: {TRAIN_VAL} images in {folder}")
    assert mirrored_files(folder) == sorted([*rows["path"], LOCK_FILE, VERIFIED_FILE])
    for relative in rows["path"]:
        assert (folder / relative).read_bytes() == (synthetic_source / relative).read_bytes()
    assert len(gets) == TRAIN_VAL
    assert bucket_dataset.image_path(rows["path"][0]) == folder / rows["path"][0]

    again = list(mirror_lines(bucket_dataset, rows))
    assert len(again) == 1
    assert again[0].startswith(f"all there: {TRAIN_VAL} images in {folder}")
    assert len(gets) == TRAIN_VAL  # not one more GET
    test = bucket_dataset.rows("test")
    files = bucket_dataset.image_files(test)  # only what is asked for is fetched
    assert files == [folder / relative for relative in test["path"]]
    assert len(gets) == TRAIN_VAL + len(test)


def test_a_mirror_cut_short_resumes_fetching_only_what_is_missing_or_torn(
        bucket_dataset, synthetic_source, gets):
    rows = train_val(bucket_dataset)
    folder = mirror_folder(bucket_dataset.root)
    paths = list(rows["path"])
    for relative in paths[:50]:  # what a killed mirror had renamed into place
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes((synthetic_source / relative).read_bytes())
    torn = folder / paths[7]
    torn.write_bytes(torn.read_bytes()[:100])  # a file cut short by another writer
    partial = torn.with_name(f".{torn.name}.1a2b3c4d.part")
    partial.write_bytes(b"half")
    assert not (folder / VERIFIED_FILE).exists()

    lines = list(mirror_lines(bucket_dataset, rows))
    assert lines[0].startswith(f"mirroring {TRAIN_VAL} of {TRAIN_VAL} images")  # none recorded
    fetched = TRAIN_VAL - 49  # all but the 49 whole files, each found by its sha1
    assert lines[-1].startswith(f"fetched {fetched}, kept 49: {TRAIN_VAL} images in {folder}")
    assert sorted(gets) == sorted(str(bucket_dataset.root / p) for p in [paths[7], *paths[50:]])
    assert torn.read_bytes() == (synthetic_source / paths[7]).read_bytes()
    assert json.loads((folder / VERIFIED_FILE).read_text()) == dict(
        zip(rows["path"], rows["sha1"], strict=True))


def test_trials_mirroring_together_on_one_machine_fetch_each_image_once(bucket_dataset, gets):
    """Two trials starting at once on a node that joined late: one fetches, the other waits
    for it and finds every file verified."""
    rows = train_val(bucket_dataset)
    with ThreadPoolExecutor(2) as pool:
        ends = [lines[-1] for lines in pool.map(
            lambda _: list(mirror_lines(bucket_dataset, rows)), range(2))]
    assert len(gets) == TRAIN_VAL
    assert sorted(end.split(":")[0] for end in ends) == [
        f"fetched 0, kept {TRAIN_VAL}", f"fetched {TRAIN_VAL}, kept 0"]


def test_a_failed_get_is_tried_again_and_one_that_keeps_failing_names_the_object(
        bucket_dataset, monkeypatch):
    monkeypatch.setattr(mirror, "RETRY_PAUSE_S", 0.0)
    read = BucketPath.read_bytes
    flaky = str(bucket_dataset.root / train_val(bucket_dataset)["path"][3])
    failures = {flaky: 2}  # two failed GETs, then the object

    def sometimes(self):
        if failures.get(str(self), 0) > 0:
            failures[str(self)] -= 1
            raise StorageError(f"{self}: cannot read it: Connection reset; check the bucket")
        return read(self)

    monkeypatch.setattr(BucketPath, "read_bytes", sometimes)
    list(mirror_lines(bucket_dataset, train_val(bucket_dataset)))
    assert failures[flaky] == 0
    assert (mirror_folder(bucket_dataset.root) / VERIFIED_FILE).is_file()

    test = bucket_dataset.rows("test")
    failures[str(bucket_dataset.root / test["path"][0])] = mirror.ATTEMPTS
    with pytest.raises(MirrorError) as raised:
        list(mirror_lines(bucket_dataset, test))
    assert str(raised.value) == (f"{bucket_dataset.root / test['path'][0]}: cannot read it: "
                                 f"Connection reset; check the bucket (after "
                                 f"{mirror.ATTEMPTS} tries)")


@pytest.mark.parametrize("case", ["other bytes", "missing object"])
def test_an_object_unlike_the_manifest_is_one_line_naming_it_and_never_lands(
        case, bucket_dataset, synthetic_source):
    rows = train_val(bucket_dataset)
    relative = rows["path"].iloc[-1]
    remote = bucket_dataset.root / relative
    original = remote.read_bytes()
    if case == "other bytes":
        remote.write_bytes((synthetic_source / rows["path"][0]).read_bytes())
        expected = (rf"{remote}: its bytes have sha1 [0-9a-f]{{12}}, but the manifest says "
                    rf"{rows['sha1'].iloc[-1][:12]}: the object changed since `carsweep "
                    r"prepare` read it; put it back, or prepare the dataset again")
    else:
        remote.unlink()
        expected = (rf"{remote}: no such object, but the manifest lists it; upload it again "
                    r"or prepare the dataset again")
    try:
        with pytest.raises(MirrorError, match=f"^{expected}$"):
            list(mirror_lines(bucket_dataset, rows))
    finally:
        remote.write_bytes(original)  # as the module's other tests expect it
    folder = mirror_folder(bucket_dataset.root)
    assert not (folder / relative).exists()
    assert not [p for p in folder.rglob("*.part")]  # nothing half-written left either
    assert not (folder / VERIFIED_FILE).exists()


def test_the_room_check_counts_the_mirror_and_the_caches_after_it(bucket_dataset):
    rows = train_val(bucket_dataset)
    sizes = bucket_dataset.root.files()
    needed = sum(sizes[p] for p in rows["path"])
    roomy = mirror_plan(bucket_dataset, rows, disk=lambda _: (10**9, 10**9))
    assert (roomy.to_fetch, roomy.bytes_needed, roomy.has_room) == (TRAIN_VAL, needed, True)
    tight = mirror_plan(bucket_dataset, rows, disk=lambda _: (needed + 999, 20_000))
    assert tight.bytes_reserved == 1000
    assert not tight.has_room
    assert tight.room_problem() == (
        f"the image mirror needs {needed / 1e3:.1f} kB for {TRAIN_VAL} images in "
        f"{tight.folder}, but that disk has {(needed + 999) / 1e3:.1f} kB free (1.0 kB kept "
        "spare); a container's ephemeral-storage limit (Kubernetes) is not visible to this "
        "check, which sees only the disk; free some space there or point $CARSWEEP_CACHE_DIR "
        "at a larger local disk")

    cache_bytes = cache_plan(bucket_dataset, 32).bytes_needed
    free = cache_bytes + needed  # room for the cache alone, not for the mirror too
    alone = cache_plan(bucket_dataset, 32, disk=lambda _: (free, 10**4))
    after_mirror = cache_plan(bucket_dataset, 32, disk=lambda _: (free, 10**4), beside=needed)
    assert alone.has_room
    assert not after_mirror.has_room
    assert (f"kept spare, {needed / 1e3:.1f} kB for the image mirror and other caches); a "
            "container's ephemeral-storage limit") in after_mirror.room_problem()


def test_a_cache_built_from_the_mirror_is_the_cache_of_the_local_images(
        bucket_dataset, prepared_dataset, tmp_path):
    from_bucket = build_cache(bucket_dataset, 32, cache_dir=tmp_path / "from-bucket",
                              workers=1, progress=False)
    from_folder = build_cache(load_dataset(prepared_dataset), 32,
                              cache_dir=tmp_path / "from-folder", workers=1, progress=False)
    assert np.array_equal(np.load(from_bucket), np.load(from_folder))
    verified = json.loads((mirror_folder(bucket_dataset.root) / VERIFIED_FILE).read_text())
    assert sorted(verified) == sorted(train_val(bucket_dataset)["path"])  # fetched to build it


def test_train_of_a_dataset_in_a_bucket_reads_this_machines_mirror(bucket_dataset,
                                                                   dataset_uri, tmp_path,
                                                                   capsys):
    """`carsweep train --data s3://...` (the argument was a Path: `s3:/...`, no such folder)
    trains standalone from the mirror it fills here."""
    from carsweep.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", dataset_uri, "--out", str(run), "--set", "epochs=1",
                 "--set", "resize=32", "--set", "weights=none", "--set", "device=cpu",
                 "--set", "num_workers=0", "--set", "model=mobilenet_v3_small"]) == 0
    assert f"training 1 epoch on {dataset_uri} (4 classes)" in capsys.readouterr().out
    assert (run / "metrics.csv").is_file()
    folder = mirror_folder(bucket_dataset.root)
    held = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.name not in (VERIFIED_FILE, LOCK_FILE)}
    assert held == set(bucket_dataset.rows("train", "val")["path"])
