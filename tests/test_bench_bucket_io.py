"""bench/bucket_io.py --small: a real 2-trial sweep into the loopback S3 server through the
request-counting relay, then status on a 4-trial copy in the bucket and in a folder; the
figures BENCHMARKS.md's table holds, and Tune's real snapshot read by status."""

from __future__ import annotations

import pytest
from bench_runs import run_bench


@pytest.mark.slow
def test_bucket_io_small_counts_a_sweeps_requests_and_times_status(tmp_path):
    result, _ = run_bench("bucket_io.py", "--small", out=tmp_path / "bucket_io.json",
                          timeout=400)
    sweep, kinds = result["sweep"], result["sweep"]["kinds"]
    assert sweep["period"] == "30"  # BUCKET_SNAPSHOT_PERIOD_S, as Tune's state records it
    assert sweep["snapshots"] >= 2  # the first, at the start, and the last, at the end
    # each trial's one checkpoint (the last epoch): checkpoint.pt, trial.yaml, classes.json
    assert kinds["checkpoints"]["objects"] == 2 * 3
    assert kinds["checkpoints"]["bytes"] > 2 * 10**6  # mobilenet_v3_small's weights and Adam's
    # result.json, progress.csv, params.json, params.pkl, events: at least once per trial
    assert kinds["trial results and events"]["objects"] >= 2 * 5
    assert sweep["requests"] == sum(kind["requests"] for kind in kinds.values())
    status = result["status"]
    assert len(status["seconds"]["bucket"]) == len(status["seconds"]["folder"]) == 1
    for case in ("one_at_a_time", "parallel", "one_at_a_time_far", "parallel_far"):
        assert len(status["seconds"][case]) == 1, case
    # every read of the far bucket waits 20 ms more for each answer; one at a time, in series
    far = status["seconds"]["one_at_a_time_far"][0] - status["seconds"]["one_at_a_time"][0]
    assert far > 0.02 * status["requests_per_status"] / 2
    assert status["requests_per_status"] >= 1
    assert status["printed"].startswith("in the bucket as of ")
    assert "(a running sweep uploads every 30 s)" in status["printed"]
    assert "4 of 4 trials: 4 complete" in status["printed"]  # 4 copies of the first trial
