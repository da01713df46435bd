"""The synthetic dataset: deterministic, laid out as documented, its part boxes mark the cue."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from carsweep.cli import main
from carsweep.data.sources import read_source
from carsweep.data.synth import SHAPES, make_synthetic_dataset
from carsweep.errors import UserError

SMALL = {"classes": 3, "per_class": 4, "test_per_class": 2, "size": 48}


def digests(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_another_seed_other_pictures(tmp_path):
    first = digests(make_synthetic_dataset(tmp_path / "a", seed=3, **SMALL))
    again = digests(make_synthetic_dataset(tmp_path / "b", seed=3, **SMALL))
    other = digests(make_synthetic_dataset(tmp_path / "c", seed=4, **SMALL))
    assert first == again
    images = [name for name in first if name.endswith(".png")]
    assert len(images) == 3 * (4 + 2)
    assert all(first[name] != other[name] for name in images)


def test_layout_is_the_class_csv_one_with_car_boxes(tmp_path):
    out = make_synthetic_dataset(tmp_path / "s", **SMALL)
    assert (out / "names.csv").read_text().split() == ["round", "square", "triangle"]
    train = pd.read_csv(out / "anno_train.csv", header=None)
    assert len(train) == 12
    assert train[5].value_counts().to_dict() == {1: 4, 2: 4, 3: 4}
    index = read_source(out)
    assert index.layout == "class-csv"
    assert index.images.groupby("source_split").size().to_dict() == {"test": 6, "train": 12}
    boxes = index.images[["x1", "y1", "x2", "y2"]].to_numpy()
    assert (boxes[:, 0] < boxes[:, 2]).all()
    assert (boxes[:, 1] < boxes[:, 3]).all()
    assert boxes.min() >= 0
    assert boxes.max() <= 47
    with Image.open(out / "train/round/00001.png") as image:
        assert (image.size, image.mode) == ((48, 48), "RGB")


def test_imagefolder_layout_and_jpeg_format(tmp_path):
    out = make_synthetic_dataset(tmp_path / "s", layout="imagefolder", image_format="jpg",
                                 **SMALL)
    assert not (out / "anno_train.csv").exists()
    index = read_source(out)
    assert index.layout == "imagefolder"
    assert index.images["path"].str.endswith(".jpg").all()


def test_the_part_box_holds_the_class_colour_and_nothing_else_does(tmp_path):
    """The class colour appears only inside the headlight box: the box marks the cue."""
    out = make_synthetic_dataset(tmp_path / "s", classes=4, per_class=6, size=64)
    parts = pd.read_csv(out / "parts.csv")
    assert list(parts.columns) == ["path", "part", "x1", "y1", "x2", "y2"]
    assert set(parts["part"]) == {"headlight"}
    assert len(parts) == 4 * (6 + 2)
    for row in parts.itertuples():
        colour = SHAPES[row.path.split("/")[1]][1]
        pixels = np.asarray(Image.open(out / row.path)).astype(int)
        close = np.abs(pixels - np.array(colour)).max(axis=2) < 50
        inside = np.zeros_like(close)
        inside[row.y1:row.y2 + 1, row.x1:row.x2 + 1] = True
        assert close.sum() >= 6, row.path
        assert close[inside].sum() / close.sum() >= 0.95, row.path
        assert (row.x2 - row.x1) >= 6
        assert (row.y2 - row.y1) >= 2


def test_two_cue_mode_draws_the_shape_on_headlight_and_both_wheels(tmp_path):
    out = make_synthetic_dataset(tmp_path / "s", cues=("headlight", "wheel"), **SMALL)
    parts = pd.read_csv(out / "parts.csv")
    per_image = parts.groupby("path")["part"].apply(sorted)
    assert len(per_image) == 18
    assert all(names == ["headlight", "wheel", "wheel"] for names in per_image)


def test_a_few_hundred_96px_images_take_seconds(tmp_path):
    started = time.perf_counter()
    out = make_synthetic_dataset(tmp_path / "demo", seed=0)  # the demo's defaults
    elapsed = time.perf_counter() - started
    assert len(list(out.glob("*/*/*.png"))) == 4 * (60 + 20)
    assert elapsed < 20  # about 1 s alone on one core; generous for a busy test machine


@pytest.mark.parametrize(("changes", "message"), [
    ({"classes": 1}, "classes is 1, but must be 2..8"),
    ({"classes": 9}, "classes is 9, but must be 2..8"),
    ({"per_class": 0}, "per_class is 0, but must be >= 1"),
    ({"size": 8}, "size is 8 px, but must be 16..2048"),
    ({"cues": ("grille",)}, r"cues \['grille'\] are invalid; choose one or both of"),
    ({"layout": "devkit"}, r"layout 'devkit' is unknown; valid: \['class-csv', 'imagefolder'\]"),
])
def test_bad_arguments_are_user_errors(tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        make_synthetic_dataset(tmp_path / "s", **{**SMALL, **changes})
    assert not (tmp_path / "s").exists()


def test_cli_redraws_its_own_folder_but_refuses_a_foreign_one(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--classes", "3", "--per-class", "2", "--size", "32"]) == 0
    assert "wrote 9 images of 3 classes (32 px" in capsys.readouterr().out
    assert main(["synth", str(out), "--classes", "2", "--per-class", "2", "--size", "32"]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["round", "square"]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    assert main(["synth", str(foreign)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"{foreign}: folder is not empty; pass --force" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "s"]


@pytest.mark.slow
def test_resnet18_from_scratch_learns_the_cue_in_a_few_epochs(tmp_path):
    """The demo data must be easy: ResNet-18, no pretrained weights, 32 px, 3 epochs on CPU."""
    out = make_synthetic_dataset(tmp_path / "s", per_class=60, seed=1)
    torch.manual_seed(0)

    def load(split):
        paths = sorted(out.glob(f"{split}/*/*.png"))
        names = list(SHAPES)[:4]
        x = torch.stack([torch.from_numpy(np.array(Image.open(p).resize((32, 32)))).permute(
            2, 0, 1) for p in paths]).float() / 255
        y = torch.tensor([names.index(p.parent.name) for p in paths])
        return (x - 0.5) / 0.25, y

    (x_train, y_train), (x_test, y_test) = load("train"), load("test")
    model = torchvision.models.resnet18(num_classes=4)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        model.train()
        for batch in torch.randperm(len(x_train)).split(16):
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.45  # chance is 0.25
