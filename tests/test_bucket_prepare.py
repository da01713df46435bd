"""`carsweep prepare` from and into a bucket, against the S3-compatible server on 127.0.0.1
(tests/bucket_server.py): the source staged here, the dataset uploaded, `root` the source's URI,
the same manifest as a local prepare of the same source; every refusal one line, exit 2,
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_sources import write_devkit, write_imagefolder

from carsweep.cli import main
from carsweep.data.manifest import load_dataset
from carsweep.data.prepare import prepare_dataset
from carsweep.storage import BucketPath, location

DATASET_FILES = ["audit.json", "classes.json", "dataset.json", "manifest.csv"]


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    """This test's own $CARSWEEP_STATE_DIR, where a bucket source is staged."""
    folder = tmp_path / "state"
    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(folder))
    return folder


def upload(local: Path, uri: str) -> str:
    location(uri).upload_tree(local)
    return uri


def staged_files(state_dir: Path, uri: str) -> list[str]:
    staged = state_dir / "buckets" / "s3" / uri.removeprefix("s3://")
    return sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())


def test_a_class_csv_source_in_a_bucket_prepares_into_the_bucket_as_it_does_locally(
        s3_bucket, synthetic_source, prepared_dataset, state_dir, capsys):
    source = upload(synthetic_source, f"{s3_bucket}/sources/synth")
    out = f"{s3_bucket}/data/synth"
    assert main(["prepare", source, "--out", out, "--val-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    count = sum(1 for p in synthetic_source.rglob("*") if p.is_file())
    assert (f"staging {source} in {state_dir}/buckets/s3/{source.removeprefix('s3://')}: "
            f"{count:,} files") in printed
    assert f"class-csv source {source}: 4 classes" in printed
    assert f"wrote {out}" in printed
    written = location(out)
    assert sorted(written.files()) == sorted([*DATASET_FILES, "parts.csv"])
    for name in ("manifest.csv", "classes.json", "parts.csv"):  # sha1s, labels, splits, boxes
        assert (written / name).read_bytes() == (prepared_dataset / name).read_bytes(), name
    info = json.loads((written / "dataset.json").read_text())
    assert info["root"] == source
    assert info["source"] == source
    local_info = json.loads((prepared_dataset / "dataset.json").read_text())
    assert {k: v for k, v in info.items() if k not in ("root", "source")} == {
        k: v for k, v in local_info.items() if k not in ("root", "source")}

    dataset = load_dataset(out)
    assert dataset.root == location(source)
    assert dataset.classes == ["round", "square", "triangle", "bar"]
    assert len(dataset.parts()) == len(dataset.manifest)
    first = dataset.rows("train").head(3)  # read from this machine's mirror of the source
    assert [file.read_bytes() for file in dataset.image_files(first)] == [
        (synthetic_source / relative).read_bytes() for relative in first["path"]]


def test_an_imagefolder_source_in_a_bucket_prepares_into_a_local_folder(s3_bucket, tmp_path,
                                                                        state_dir):
    local = write_imagefolder(tmp_path / "src", per_class=4, splits=("train", "test"))
    source = upload(local, f"{s3_bucket}/pets")
    prepare_dataset(local, tmp_path / "here", say=print)
    dataset = prepare_dataset(source, tmp_path / "there", say=print)
    assert dataset.root == location(source)
    assert dataset.info["layout"] == "imagefolder"
    assert ((tmp_path / "there/manifest.csv").read_text()
            == (tmp_path / "here/manifest.csv").read_text())


def test_a_devkit_source_reads_its_mat_files_from_the_bucket_and_roots_at_stanford_cars(
        s3_bucket, tmp_path, state_dir):
    local = write_devkit(tmp_path / "src")
    source = upload(local, f"{s3_bucket}/stanford-cars")
    here = prepare_dataset(local, tmp_path / "here", say=print)
    there = prepare_dataset(source, f"{s3_bucket}/data", say=print)
    assert str(there.root) == f"{source}/stanford_cars"
    assert there.manifest.equals(here.manifest)
    assert json.loads(location(f"{s3_bucket}/data/dataset.json").read_text())["root"] == (
        f"{source}/stanford_cars")


def test_the_staged_copy_is_kept_and_only_what_changed_in_the_bucket_is_downloaded_again(
        s3_bucket, tmp_path, state_dir, capsys):
    local = write_imagefolder(tmp_path / "src", per_class=3)
    source = upload(local, f"{s3_bucket}/pets")
    out = f"{s3_bucket}/data"
    assert main(["prepare", source, "--out", out, "--split", "pooled:0.7"]) == 0
    assert "(9 to download, 0 already there)" in capsys.readouterr().out
    assert staged_files(state_dir, source) == sorted(
        p.relative_to(local).as_posix() for p in local.rglob("*.png"))

    location(f"{source}/cat/img0.png").write_bytes((local / "dog/img0.png").read_bytes())
    location(f"{source}/fox/img2.png").unlink()
    assert main(["prepare", source, "--out", out, "--split", "pooled:0.7", "--force"]) == 0
    assert "8 files, " in (printed := capsys.readouterr().out)
    assert "(1 to download, 7 already there)" in printed
    assert "fox/img2.png" not in staged_files(state_dir, source)
    manifest = load_dataset(out).manifest.set_index("path")
    assert "fox/img2.png" not in manifest.index
    assert manifest.loc["cat/img0.png", "sha1"] == manifest.loc["dog/img0.png", "sha1"]


def test_a_prepared_folder_and_its_images_uploaded_as_they_are_load_from_the_bucket(
        s3_bucket, synthetic_source, prepared_dataset, tmp_path):
    upload(prepared_dataset, f"{s3_bucket}/data")
    dataset = load_dataset(f"{s3_bucket}/data")
    local = load_dataset(prepared_dataset)
    assert dataset.classes == local.classes
    assert dataset.manifest.equals(local.manifest)
    assert dataset.root == synthetic_source.resolve()  # the images still on each node's disk
    assert dataset.image_path("x.png") == synthetic_source.resolve() / "x.png"

    # With the images uploaded beside it, a `root` relative to the dataset (or their URI)
    # points into the bucket.
    upload(synthetic_source, f"{s3_bucket}/images")
    info = json.loads((prepared_dataset / "dataset.json").read_text())
    location(f"{s3_bucket}/data/dataset.json").write_text(json.dumps({**info,
                                                                      "root": "../images"}))
    moved = load_dataset(location(f"{s3_bucket}/data"))
    assert isinstance(moved.root, BucketPath)
    assert str(moved.root) == f"{s3_bucket}/images"
    assert (moved.root / moved.manifest["path"][0]).read_bytes() == (
        synthetic_source / moved.manifest["path"][0]).read_bytes()


def _bucket_objects(uri: str) -> dict[str, int]:
    return location(uri).files()


@pytest.mark.parametrize("case", ["missing bucket", "missing source prefix",
                                  "out not writable", "out holds a dataset",
                                  "out holds the source", "source in no known layout"])
def test_bad_bucket_input_is_one_line_exit_2_and_nothing_written(
        case, s3_bucket, tmp_path, state_dir, capsys):
    local = write_imagefolder(tmp_path / "src", per_class=2)
    source, out = upload(local, f"{s3_bucket}/pets"), f"{s3_bucket}/data"
    extra = []
    if case == "missing bucket":
        source = f"{s3_bucket}-gone/pets"
        expected = f"{source}: the bucket {s3_bucket.removeprefix('s3://')}-gone does not exist"
    elif case == "missing source prefix":
        source = f"{s3_bucket}/nothing"
        expected = f"{source}: no such source prefix (no object under it)"
    elif case == "out not writable":
        out = f"{s3_bucket}-gone/data"
        expected = f"--out {out} is not writable: {out}/.carsweep-probe-"
    elif case == "out holds a dataset":
        location(f"{out}/dataset.json").write_text("{}")
        expected = f"--out {out} already holds a prepared dataset; pass --force"
    elif case == "out holds the source":
        out, extra = s3_bucket, ["--force"]
        expected = f"--out {out} holds the source {source}"
    else:  # staged, then refused in the bucket's names, not the staged copy's
        source = f"{s3_bucket}/notes"
        location(f"{source}/readme.txt").write_text("no images here")
        expected = f"{source}: unrecognised dataset layout; expected one of devkit"
    before = _bucket_objects(s3_bucket)
    assert main(["prepare", source, "--out", out, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"carsweep prepare: error: {expected}"), captured.err
    assert _bucket_objects(s3_bucket) == before
    assert state_dir.exists() == (case == "source in no known layout")  # staged only then


def test_cache_with_a_bucket_is_refused_before_any_work(s3_bucket, tmp_path, state_dir,
                                                        capsys):
    source = upload(write_imagefolder(tmp_path / "src"), f"{s3_bucket}/pets")
    assert main(["prepare", source, "--out", str(tmp_path / "data"), "--cache", "32"]) == 2
    assert "with a source or --out in a bucket, prepare without --cache" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    assert not state_dir.exists()
