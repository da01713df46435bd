"""bench/recipes.py's smoke mode runs, and reports every recipe it promises."""

from __future__ import annotations

import pytest
from bench_runs import run_bench


@pytest.mark.slow
def test_recipes_smoke_mode_reports_each_recipe_against_the_baseline(tmp_path):
    result, _ = run_bench("recipes.py", "--smoke", out=tmp_path / "result.json")
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
