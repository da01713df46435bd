"""The data-path benchmarks' small modes run, and report every row they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_runs import run_bench

from carsweep.trainable.augment import AUGMENTATIONS

PER_IMAGE = {name for name, preset in AUGMENTATIONS.items()
             if name != "none" and not preset.per_batch}


def _run(script: str, tmp_path: Path, *args: str) -> dict:
    return run_bench(script, "--small", *args, out=tmp_path / "result.json")[0]


@pytest.mark.slow
def test_data_path_small_mode_reports_every_row_per_core(tmp_path):
    result = _run("data_path.py", tmp_path, "--presets", "flip", "trivialaugment")
    rows = {row["what"]: row for row in result["rows"]}
    assert set(rows) == {"seed-style", "cached uint8, warm", "cached uint8, cold",
                         "cached, warm, normalised on the CPU",
                         "cached, warm, normalised on the CPU in one piece"}
    assert all(row["images_per_s"] > 0 for row in rows.values())
    assert rows["seed-style"]["cores"] == result["cores"]
    assert result["seed_per_core"] == pytest.approx(
        rows["seed-style"]["images_per_s"] / result["cores"])
    assert [row["preset"] for row in result["presets"]] == ["flip", "trivialaugment"]
    assert all(row["cpu_per_image"] > 0 and row["batch_op"] > 0 for row in result["presets"])


@pytest.mark.slow
def test_augment_ops_small_mode_times_both_forms_of_every_preset(tmp_path):
    result = _run("augment_ops.py", tmp_path)
    assert {row["preset"] for row in result["rows"]} == PER_IMAGE
    assert all(row["cpu per image"] > 0 and row["batch op"] > 0 for row in result["rows"])


@pytest.mark.slow
def test_data_pieces_small_mode_times_every_way_of_reading_a_batch(tmp_path):
    result = _run("data_pieces.py", tmp_path)
    names = [row["variant"] for row in result["rows"]]
    assert len(names) == 8
    assert "pread, numpy batch" in names  # the way CachedBatches reads
    assert all(row["images_per_s"] > 0 for row in result["rows"])
