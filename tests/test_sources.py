"""Dataset sources: each layout read into the same table, checked against what it should hold."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from fake_sources import (
    CLASSES,
    SLASH_CLASS,
    write_class_csv,
    write_devkit,
    write_image,
    write_imagefolder,
)
from torchvision.datasets import StanfordCars

from carsweep.data.sources import LAYOUTS, detect_layout, read_source
from carsweep.errors import UserError


@pytest.mark.parametrize("split", ["train", "test"])
def test_devkit_samples_and_labels_equal_torchvision_stanford_cars(tmp_path, split):
    write_devkit(tmp_path, train=3, test=2)
    index = read_source(tmp_path, "devkit")
    reference = StanfordCars(tmp_path, split=split, download=False)
    rows = index.images[index.images["source_split"] == split]
    ours = [(str(index.root / path), index.classes.index(name))
            for path, name in zip(rows["path"], rows["class_name"], strict=True)]
    assert ours == reference._samples
    assert index.classes == reference.classes
    assert len(ours) == 3 * len(CLASSES) if split == "train" else 2 * len(CLASSES)


def test_devkit_keeps_the_boxes_and_accepts_the_stanford_cars_folder_itself(tmp_path):
    write_devkit(tmp_path, train=2, test=1)
    index = read_source(tmp_path / "stanford_cars")  # auto, given the base folder
    assert index.layout == "devkit"
    assert index.root == (tmp_path / "stanford_cars").resolve()
    first = index.images.iloc[0]  # the fake annotations are written in reverse file order
    assert first["path"] == "cars_train/00006.jpg"
    assert first["class_name"] == CLASSES[2]
    assert (first["x1"], first["y1"], first["x2"], first["y2"]) == (4, 3, 32, 35)


def test_devkit_annotation_that_does_not_parse_names_the_file(tmp_path):
    write_devkit(tmp_path)
    bad = tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    bad.write_bytes(b"this is not a MATLAB file")
    with pytest.raises(UserError, match="cars_train_annos.mat: not a readable MATLAB"):
        read_source(tmp_path)


def test_devkit_annotation_without_the_expected_variable(tmp_path):
    write_devkit(tmp_path)
    scipy.io.savemat(tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat",
                     {"something_else": np.arange(3)})
    with pytest.raises(UserError, match=r"no variable `annotations`.*something_else"):
        read_source(tmp_path)


def test_devkit_image_in_annotations_but_absent_is_named(tmp_path):
    write_devkit(tmp_path)
    (tmp_path / "stanford_cars" / "cars_test" / "00002.jpg").unlink()
    with pytest.raises(UserError, match=r"1 annotated image\(s\) not found.*cars_test/00002.jpg"):
        read_source(tmp_path)


def test_class_csv_matches_slash_names_to_dash_folders(tmp_path):
    write_class_csv(tmp_path, train=3, test=2)
    index = read_source(tmp_path)
    assert index.layout == "class-csv"
    assert index.classes == CLASSES
    slash = index.images[index.images["class_name"] == SLASH_CLASS]
    assert len(slash) == 5
    assert set(slash["path"].str.split("/").str[1]) == {"Ram C-V Cargo Van Minivan 2012"}
    assert index.images.groupby("source_split").size().to_dict() == {"test": 6, "train": 9}
    row = index.images[index.images["path"] == "train/Ram C-V Cargo Van Minivan 2012/00004.jpg"]
    assert row[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[3.0, 3.0, 31.0, 35.0]]


def test_class_csv_finds_images_in_kaggles_nested_car_data_folder(tmp_path):
    write_class_csv(tmp_path, nested="car_data/car_data")
    index = read_source(tmp_path)
    assert index.images["path"].str.startswith("car_data/car_data/").all()
    assert len(index.images) == 6 * len(CLASSES)


def test_class_csv_image_without_a_row_is_reported_by_name(tmp_path):
    write_class_csv(tmp_path)
    write_image(tmp_path / "train" / "Ram C-V Cargo Van Minivan 2012" / "stray.jpg", seed=5)
    with pytest.raises(UserError, match=r"1 image\(s\) have no row in anno_train.csv.*stray.jpg"):
        read_source(tmp_path)


def test_class_csv_image_in_the_wrong_class_folder_is_reported(tmp_path):
    write_class_csv(tmp_path, train=1, test=1)
    moved = tmp_path / "test" / CLASSES[0] / "00001.jpg"
    moved.rename(tmp_path / "test" / CLASSES[2] / "00001.jpg")
    with pytest.raises(UserError, match=r"anno_test.csv: 1 annotated image\(s\) not found: "
                                        r"test/AM General Hummer SUV 2000/00001.jpg"):
        read_source(tmp_path)


@pytest.mark.parametrize(("line", "problem"), [
    ("00001.jpg,1,2,3\n", "line 1 is '00001.jpg,1,2,3'; expected filename,x1,y1,x2,y2,class"),
    ("00001.jpg,1,2,3,4,x\n", "line 1 is '00001.jpg,1,2,3,4,x'"),
    ("00001.jpg,1,2,3,4,9\n", "line 1 has class 9, but names.csv names classes 1..3"),
])
def test_class_csv_annotation_that_does_not_parse_names_file_and_line(tmp_path, line, problem):
    write_class_csv(tmp_path)
    (tmp_path / "anno_test.csv").write_text(line)
    with pytest.raises(UserError, match="anno_test.csv: " + problem.replace("(", r"\(")):
        read_source(tmp_path)


def test_class_csv_annotation_may_carry_a_header_row(tmp_path):
    write_class_csv(tmp_path, train=1, test=1)
    rows = (tmp_path / "anno_test.csv").read_text()
    (tmp_path / "anno_test.csv").write_text("Image,x1,y1,x2,y2,Class\n" + rows)
    assert len(read_source(tmp_path).images) == 2 * len(CLASSES)


def test_class_csv_without_names_file(tmp_path):
    write_class_csv(tmp_path)
    (tmp_path / "names.csv").unlink()
    with pytest.raises(UserError, match=r"names.csv: class names file not found"):
        read_source(tmp_path)


def test_plain_imagefolder_classes_are_sorted_folder_names(tmp_path):
    write_imagefolder(tmp_path / "src", classes=("zebra", "ant", "mole"), per_class=2)
    index = read_source(tmp_path / "src")
    assert index.layout == "imagefolder"
    assert index.classes == ["ant", "mole", "zebra"]
    assert set(index.images["source_split"]) == {""}
    assert index.images["x1"].isna().all()
    assert index.images["path"].tolist()[:2] == ["ant/img0.png", "ant/img1.png"]


def test_imagefolder_with_split_folders_keeps_the_source_split(tmp_path):
    write_imagefolder(tmp_path, per_class=2, splits=("train", "test"))
    index = read_source(tmp_path)
    assert index.images.groupby("source_split").size().to_dict() == {"test": 6, "train": 6}
    assert index.classes == ["cat", "dog", "fox"]


def test_imagefolder_class_folder_with_no_images_is_an_error(tmp_path):
    write_imagefolder(tmp_path)
    (tmp_path / "empty class").mkdir()
    (tmp_path / "empty class" / "notes.txt").write_text("no pictures here")
    with pytest.raises(UserError, match=r"empty class: class folder has no images"):
        read_source(tmp_path)


def test_auto_detects_each_layout_and_registry_order_puts_imagefolder_last(tmp_path):
    assert list(LAYOUTS)[-1] == "imagefolder"
    assert detect_layout(write_devkit(tmp_path / "a")) == "devkit"
    assert detect_layout(write_class_csv(tmp_path / "b")) == "class-csv"
    assert detect_layout(write_imagefolder(tmp_path / "c")) == "imagefolder"


def test_unrecognised_layout_and_missing_folder(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"unrecognised dataset layout; expected one of devkit"):
        read_source(tmp_path)
    with pytest.raises(UserError, match=r"nowhere: no such source folder"):
        read_source(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"--layout 'coco' is unknown; valid: \['auto', 'devkit'"):
        read_source(tmp_path, "coco")
