"""bench/bucket_mirror.py --small: a dataset in a bucket mirrored cold, again, and after half
of it was deleted, with moto_server's memory beside it."""

from __future__ import annotations

from bench_runs import run_bench


def test_bucket_mirror_small_times_a_cold_a_recorded_and_a_resumed_mirror(tmp_path):
    result, printed = run_bench("bucket_mirror.py", "--small", out=tmp_path / "mirror.json",
                                timeout=300)
    assert result["images"] == 96  # train+val: 4 classes x (18 train + 6 val)
    assert result["bytes"] > 0
    assert result["cold_line"].startswith("fetched 96, kept 0: 96 images in ")
    assert result["again_line"].startswith("all there: 96 images in ")
    assert result["resumed_line"].startswith("fetched 48, kept 48: 96 images in ")
    assert result["again_s"] < result["cold_s"]  # nothing fetched, nothing hashed
    for moment in ("server_after_upload", "server_after_mirror"):
        assert 0 < result[moment]["rss"] <= result[moment]["peak"]
    assert "| cold (every image fetched) |" in printed
