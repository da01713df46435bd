"""Audit: every image decoded, colour modes converted right, problems found and reported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fake_sources import write_image, write_imagefolder
from PIL import Image

from carsweep.data.audit import inspect_images
from carsweep.data.images import open_rgb
from carsweep.data.prepare import prepare_dataset
from carsweep.errors import UserError

RED = (200, 30, 60)


def pixel(image: Image.Image) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[2, 2])


def test_cmyk_jpeg_comes_back_as_the_same_rgb_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), RED).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    rgb = open_rgb(path)
    assert rgb.mode == "RGB"
    assert np.abs(np.subtract(pixel(rgb), RED)).max() <= 6
    # the loaders' plain .convert("RGB") agrees for CMYK (PIL undoes Adobe's inversion itself)
    assert pixel(Image.open(path).convert("RGB")) == pixel(rgb)


def test_grayscale_and_palette_and_16_bit_images_convert_to_rgb(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "gray.png")
    palette = Image.new("RGB", (8, 8), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert pixel(open_rgb(tmp_path / "gray.png")) == (77, 77, 77)
    assert pixel(open_rgb(tmp_path / "palette.png")) == RED
    assert pixel(open_rgb(tmp_path / "deep.png")) == (255, 255, 255)


def test_transparent_pixels_become_white_not_the_hidden_colour(tmp_path):
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black...
    pixels[4:, :, :] = (*RED, 255)  # ...over an opaque red bottom half
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    rgb = np.asarray(open_rgb(tmp_path / "alpha.png"))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[7, 7]) == RED
    # why: a bare .convert("RGB") shows the colour stored under the transparency (black here)
    assert tuple(np.asarray(Image.open(tmp_path / "alpha.png").convert("RGB"))[0, 0]) == (0, 0, 0)


def test_inspect_reports_why_a_file_does_not_decode(tmp_path):
    write_image(tmp_path / "good.jpg", seed=1)
    (tmp_path / "text.jpg").write_text("not an image")
    whole = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    table = inspect_images(tmp_path, ["good.jpg", "text.jpg", "truncated.jpg"]).set_index("path")
    assert table.loc["good.jpg", "error"] == ""
    assert (table.loc["good.jpg", "width"], table.loc["good.jpg", "height"]) == (48, 40)
    assert table.loc["text.jpg", "error"].startswith("cannot decode: cannot identify image")
    assert table.loc["truncated.jpg", "error"].startswith("cannot decode:")
    assert len(table.loc["good.jpg", "sha1"]) == 40


def test_parallel_inspection_gives_the_same_table(tmp_path):
    paths = []
    for index in range(6):
        write_image(tmp_path / f"{index}.png", seed=index)
        paths.append(f"{index}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    paths.append("bad.png")
    assert inspect_images(tmp_path, paths, workers=2).equals(
        inspect_images(tmp_path, paths, workers=1))


@pytest.fixture
def messy_source(tmp_path):
    """train/test class folders with a corrupt file, a CMYK, a grayscale, a tiny image and a
    file copied from train into test."""
    root = write_imagefolder(tmp_path / "src", per_class=4, splits=("train", "test"))
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("RGB", (40, 40), RED).convert("CMYK").save(root / "train" / "dog" / "cmyk.jpg")
    Image.new("L", (40, 40), 90).save(root / "train" / "fox" / "gray.png")
    write_image(root / "test" / "fox" / "tiny.png", seed=99, size=(12, 20))
    shutil.copy(root / "train" / "cat" / "img0.png", root / "test" / "cat" / "copy.png")
    return root


def test_prepare_leaves_out_a_corrupt_file_with_a_warning_and_audits_the_rest(messy_source,
                                                                              tmp_path):
    warnings = []
    dataset = prepare_dataset(messy_source, tmp_path / "out", val_fraction=0.25,
                              warn=warnings.append)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{messy_source / 'train/cat/broken.png'}: cannot decode: ")
    assert warnings[0].endswith("; left out")
    assert "train/cat/broken.png" not in set(dataset.manifest["path"])
    assert len(dataset.manifest) == 4 * 3 * 2 + 4  # cmyk, gray, tiny, copy kept; broken not
    audit = json.loads((dataset.folder / "audit.json").read_text())
    assert audit["unreadable"][0]["path"] == "train/cat/broken.png"
    assert audit["modes"] == {"CMYK": 1, "L": 1, "RGB": 26}
    assert audit["converted_to_rgb"] == 2
    assert audit["tiny"] == {"count": 1, "paths": ["test/fox/tiny.png"]}
    duplicates = audit["duplicates_across_splits"]
    assert duplicates["count"] == 1
    assert sorted(duplicates["groups"][0]["paths"]) == ["test/cat/copy.png", "train/cat/img0.png"]
    counts = audit["classes_per_split"]
    assert counts["test"] == {"images": 14, "classes": 3, "min": 4, "max": 5,
                              "imbalance": 1.25, "smallest_class": "dog"}
    assert counts["train"]["images"] + counts["val"]["images"] == 14


def test_strict_refuses_a_corrupt_file_and_writes_nothing(messy_source, tmp_path):
    with pytest.raises(UserError, match=r"train/cat/broken.png: cannot decode: .* \(1 unreadable "
                                        r"image\(s\); --strict refuses them\)"):
        prepare_dataset(messy_source, tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_class_left_with_no_readable_image_is_an_error(tmp_path):
    root = write_imagefolder(tmp_path / "src", per_class=1, splits=("train", "test"))
    (root / "train" / "dog" / "img0.png").write_bytes(b"junk")
    (root / "test" / "dog" / "img0.png").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"class 'dog' has no readable images left"):
        prepare_dataset(root, tmp_path / "out", warn=lambda line: None)
