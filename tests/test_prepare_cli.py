"""`carsweep prepare` end to end: the folder it writes, and every bad input as one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fake_sources import CLASSES, write_class_csv, write_devkit, write_image, write_imagefolder

from carsweep.cli import main
from carsweep.data.manifest import MANIFEST_COLUMNS, load_dataset


def test_shared_fixture_is_the_documented_prepared_synthetic_dataset(prepared_dataset,
                                                                     synthetic_source):
    dataset = load_dataset(prepared_dataset)
    assert dataset.classes == ["round", "square", "triangle", "bar"]
    assert dataset.root == synthetic_source.resolve()
    assert dataset.info["layout"] == "class-csv"
    assert dataset.split_scheme == "official"
    counts = dataset.manifest.groupby(["class_name", "split"]).size()
    assert set(counts.xs("train", level="split")) == {18}
    assert set(counts.xs("val", level="split")) == {6}
    assert set(counts.xs("test", level="split")) == {8}
    assert list(dataset.manifest.columns) == MANIFEST_COLUMNS
    assert dataset.manifest[["x1", "y1", "x2", "y2"]].notna().all().all()  # car boxes
    parts = dataset.parts()
    assert len(parts) == len(dataset.manifest)
    assert set(parts["path"]) == set(dataset.manifest["path"])
    assert all(dataset.image_path(p).is_file() for p in dataset.manifest["path"])


def test_synth_then_prepare_through_the_cli_as_the_demo_does(tmp_path, capsys):
    source, out = tmp_path / "source", tmp_path / "data"
    assert main(["synth", str(source), "--per-class", "8", "--size", "48", "--seed", "0"]) == 0
    assert main(["prepare", str(source), "--out", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert f"class-csv source {source.resolve()}: 4 classes, split official (seed 0)" in printed
    assert "40 images kept" in printed
    info = json.loads((out / "dataset.json").read_text())
    assert info["root"] == str(source.resolve())
    assert Path(info["root"]).is_absolute()
    assert info["parts_file"] == "parts.csv"
    assert info["counts"] == {"train": 28, "val": 4, "test": 8}
    assert not list(out.rglob("*.png"))  # images are not copied


def test_same_seed_same_manifest_and_pooled_scheme_is_recorded(tmp_path):
    source = write_class_csv(tmp_path / "src", train=6, test=4)
    assert main(["prepare", str(source), "--out", str(tmp_path / "a"), "--seed", "5"]) == 0
    assert main(["prepare", str(source), "--out", str(tmp_path / "b"), "--seed", "5"]) == 0
    assert (tmp_path / "a/manifest.csv").read_text() == (tmp_path / "b/manifest.csv").read_text()
    assert main(["prepare", str(source), "--out", str(tmp_path / "p"), "--split", "pooled:0.7",
                 "--val-fraction", "0.2"]) == 0
    dataset = load_dataset(tmp_path / "p")
    assert dataset.split_scheme == "pooled:0.7"
    assert dataset.info["val_fraction"] == 0.2
    per_class = dataset.manifest.groupby(["class_name", "split"]).size()
    assert set(per_class.xs("test", level="split")) == {3}  # round(10 * 0.3)


def test_devkit_source_gives_labels_and_boxes_in_the_manifest(tmp_path):
    write_devkit(tmp_path / "src", train=3, test=2)
    assert main(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    dataset = load_dataset(tmp_path / "out")
    assert dataset.info["layout"] == "devkit"
    assert dataset.classes == CLASSES
    assert dataset.root == (tmp_path / "src" / "stanford_cars").resolve()
    row = dataset.manifest.set_index("path").loc["cars_train/00004.jpg"]
    assert (row["label"], row["class_name"], row["x1"], row["x2"]) == (1, CLASSES[1], 3, 31)
    assert dataset.info["parts_file"] is None
    assert dataset.parts() is None


def test_force_replaces_an_existing_dataset_whole(tmp_path):
    source = write_imagefolder(tmp_path / "src", per_class=4, splits=("train", "test"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    assert main(["prepare", str(source), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.json", "classes.json", "dataset.json", "manifest.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temp left


def test_an_empty_out_folder_is_fine_without_force(tmp_path):
    source = write_imagefolder(tmp_path / "src", per_class=4, splits=("train", "test"))
    (tmp_path / "out").mkdir()
    assert main(["prepare", str(source), "--out", str(tmp_path / "out")]) == 0
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 24


def _break_class_csv_annotation(root: Path) -> None:
    (root / "anno_train.csv").write_text("00001.jpg,1,2\n")


def _break_devkit_annotation(root: Path) -> None:
    (root / "stanford_cars/devkit/cars_train_annos.mat").write_bytes(b"MATLAB? no")


def _remove_an_annotated_image(root: Path) -> None:
    (root / "train" / CLASSES[0] / "00002.jpg").unlink()


def _add_an_image_without_a_row(root: Path) -> None:
    write_image(root / "test" / CLASSES[2] / "extra.jpg", seed=3)


def _add_an_empty_class_folder(root: Path) -> None:
    (root / "train" / "owl").mkdir()


def _add_a_corrupt_image(root: Path) -> None:
    (root / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG not really")


BAD_INPUTS = {  # name -> (write the source, break it, extra arguments, expected message part)
    "missing folder": (None, None, [], "nowhere: no such source folder"),
    "unrecognised layout": (lambda r: (r / "readme.txt").write_text("hi") and r, None, [],
                            "unrecognised dataset layout"),
    "annotation csv does not parse": (write_class_csv, _break_class_csv_annotation, [],
                                      "anno_train.csv: line 1 is '00001.jpg,1,2'"),
    "devkit .mat does not parse": (write_devkit, _break_devkit_annotation, [],
                                   "cars_train_annos.mat: not a readable MATLAB .mat file"),
    "annotated image absent": (write_class_csv, _remove_an_annotated_image, [],
                               "not found: train/AM General Hummer SUV 2000/00002.jpg"),
    "image without a row": (write_class_csv, _add_an_image_without_a_row, [],
                            "have no row in anno_test.csv (or sit in another class's folder): "
                            "test/Volkswagen Beetle Hatchback 2012/extra.jpg"),
    "class folder with no images": (lambda r: write_imagefolder(r, splits=("train", "test")),
                                    _add_an_empty_class_folder, [],
                                    "train/owl: class folder has no images"),
    "corrupt image under --strict": (lambda r: write_imagefolder(r, splits=("train", "test")),
                                     _add_a_corrupt_image, ["--strict"],
                                     "train/cat/bad.png: cannot decode"),
    "bad split": (write_class_csv, None, ["--split", "pooled:7"],
                  "--split 'pooled:7': the pooled ratio must be a number between 0 and 1"),
    "bad val fraction": (write_class_csv, None, ["--val-fraction", "1.5"],
                         "--val-fraction is 1.5, but must be >= 0 and < 1"),
    "unknown layout": (write_class_csv, None, ["--layout", "coco"],
                       "--layout 'coco' is unknown; valid: ['auto', 'devkit', 'class-csv'"),
    "official split without one": (lambda r: write_imagefolder(r), None, [],
                                   "the source has no official train/test split"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    write, damage, extra, expected = BAD_INPUTS[case]
    source = tmp_path / ("nowhere" if write is None else "src")
    if write is not None:
        source.mkdir()
        write(source)
    if damage is not None:
        damage(source)
    out = tmp_path / "out"
    code = main(["prepare", str(source), "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("carsweep prepare: error: ")
    assert expected in captured.err
    assert not out.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ([] if write is None else ["src"])


def test_existing_non_empty_out_is_refused_without_force_and_left_alone(tmp_path, capsys):
    source = write_class_csv(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["prepare", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"{out}: folder is not empty; pass --force to replace it" in error
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("out", ["src", "."])
def test_out_that_holds_the_source_is_refused_even_with_force(tmp_path, capsys, out):
    source = write_imagefolder(tmp_path / "src", per_class=2, splits=("train", "test"))
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["prepare", str(source), "--out", str(tmp_path / out), "--force"]) == 2
    assert "holds the source" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*")) == before
