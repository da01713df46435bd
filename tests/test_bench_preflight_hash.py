"""bench/preflight_hash.py --small: the pre-flight's image check timed beside a decode pass of
the same images, every row BENCHMARKS.md's table holds."""

from __future__ import annotations

from bench_runs import run_bench


def test_preflight_hash_small_times_the_check_beside_a_decode_pass(tmp_path):
    result, printed = run_bench("preflight_hash.py", "--small", out=tmp_path / "hash.json",
                                timeout=300)
    rows = {row["row"]: row for row in result["rows"]}
    assert list(rows) == ["stat", "hash, cold", "hash, warm", "decode"]
    assert result["images"] == 48  # train+val: 4 classes x 12 drawn for training
    assert result["bytes"] > 0
    assert rows["decode"]["of_decode"] == 1.0
    assert all(row["seconds"] >= 0 and row["images_per_s"] > 0 for row in rows.values())
    assert "| hash, cold |" in printed
