"""bench/recipes.py's smoke mode runs, and reports every recipe it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_recipes_smoke_mode_reports_each_recipe_against_the_baseline(tmp_path):
    out = tmp_path / "result.json"
    environment = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    done = subprocess.run([sys.executable, str(BENCH / "recipes.py"), "--smoke", "--json",
                           str(out)], capture_output=True, text=True, timeout=600,
                          env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "load average" in done.stdout  # every figure says what the machine was doing
    result = json.loads(out.read_text())
    rows = {row["recipe"]: row for row in result["rows"]}
    assert list(rows) == ["flip", "flip, TTA", "flip+mixup", "flip+cutmix", "flip+snapmix"]
    assert all(len(run) == len(rows) for run in result["runs"])
    assert result["seeds"] == len(result["runs"]) == 2
    for row in rows.values():
        assert len(row["top1"]) == 2
        assert all(0 <= value <= 1 for value in row["top1"])
        assert row["images_per_s"] > 0
        paired = [run[row["recipe"]]["top1"] - run["flip"]["top1"] for run in result["runs"]]
        assert row["diff"] == pytest.approx(paired)
    assert rows["flip"]["speed_ratio"] == pytest.approx(1.0)
    assert rows["flip"]["diff"] == [0.0, 0.0]
