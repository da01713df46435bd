"""The Stanford-Cars-shaped source: its shape (classes, names, sizes, split counts), what
`prepare` makes of it, determinism across worker counts, and the CLI preset."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from carsweep.cli import main
from carsweep.data.manifest import load_dataset
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth_cars import car_class_names, make_cars_dataset, official_counts
from carsweep.errors import UserError


def digests(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_default_shape_is_stanford_cars():
    assert [sum(official_counts(split)) for split in ("train", "test")] == [8144, 8041]
    assert {min(official_counts("train")), max(official_counts("train"))} == {41, 42}
    names = car_class_names(196)
    assert len(set(names)) == 196
    assert names[0] == "Aldora A4 Sedan 1991"
    assert sum("/" in name for name in names) == 21  # "C/V Cargo Van", as Stanford Cars has


def test_a_small_set_is_prepared_like_the_real_one_and_the_same_for_any_worker_count(tmp_path):
    one = make_cars_dataset(tmp_path / "one", classes=9, per_class=4, test_per_class=1,
                            workers=1, progress=False)
    two = make_cars_dataset(tmp_path / "two", classes=9, per_class=4, test_per_class=1,
                            workers=2, progress=False)
    assert digests(one) == digests(two)
    images = sorted(one.glob("*/*/*.jpg"))
    assert len(images) == 45
    with Image.open(images[0]) as image:
        assert (image.size, image.mode, image.format) == ((700, 480), "RGB", "JPEG")
    sizes = [p.stat().st_size for p in images]
    assert 60_000 < sum(sizes) / len(sizes) < 150_000  # photo-like JPEGs, ~100 kB
    dataset = load_dataset(prepare_dataset(one, tmp_path / "prepared", val_fraction=0.25,
                                           warn=pytest.fail).folder)
    assert dataset.info["layout"] == "class-csv"
    assert dataset.classes == car_class_names(9)
    assert "Istra A4 C/V Cargo Van 2009" in dataset.classes  # its folder spells "/" as "-"
    assert dataset.manifest.groupby("split").size().to_dict() == {"test": 9, "train": 27,
                                                                   "val": 9}
    boxes = dataset.manifest[["x1", "y1", "x2", "y2"]]
    assert boxes.notna().all().all()
    assert ((boxes["x2"] - boxes["x1"]) > 300).all()  # a car is most of the picture
    parts = dataset.parts()
    assert len(parts) == 45
    assert set(parts["part"]) == {"headlight"}


def test_another_seed_draws_other_pictures(tmp_path):
    first = digests(make_cars_dataset(tmp_path / "a", classes=2, per_class=1, test_per_class=0,
                                      seed=1, workers=1, progress=False))
    other = digests(make_cars_dataset(tmp_path / "b", classes=2, per_class=1, test_per_class=0,
                                      seed=2, workers=1, progress=False))
    jpegs = [name for name in first if name.endswith(".jpg")]
    assert len(jpegs) == 2
    assert all(first[name] != other[name] for name in jpegs)


@pytest.mark.parametrize(("changes", "message"), [
    ({"classes": 197}, "classes is 197, but must be 2..196 for the cars preset"),
    ({"per_class": 0}, "per_class is 0, but must be >= 1"),
    ({"test_per_class": -1}, "test_per_class is -1, but must be >= 0"),
])
def test_bad_arguments_are_user_errors(tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        make_cars_dataset(tmp_path / "s", **changes)
    assert not (tmp_path / "s").exists()


def test_cli_preset_cars_and_options_of_the_other_preset(tmp_path, capsys):
    out = tmp_path / "cars"
    assert main(["synth", str(out), "--preset", "cars", "--classes", "2", "--per-class", "1",
                 "--test-per-class", "1", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("wrote 4 images of 2 classes (700x480 JPEG, 0.")
    assert printed.rstrip().endswith(" s")
    for argv, message in (
            (["--preset", "cars", "--size", "64"],
             "--size does not apply to --preset cars; it is an option of --preset demo"),
            (["--workers", "2"],
             "--workers does not apply to --preset demo; it is an option of --preset cars")):
        assert main(["synth", str(tmp_path / "refused"), *argv]) == 2
        assert capsys.readouterr().err == f"carsweep synth: error: {message}\n"
    assert not (tmp_path / "refused").exists()
