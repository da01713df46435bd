"""bench/replay.py's --small mode replays the recorded curves (bench/curves/main.json) through
ASHA and PASHA in seconds, and reports what BENCHMARKS.md's tables hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_replay_small_mode_compares_pasha_with_asha_on_the_recorded_curves(tmp_path):
    out = tmp_path / "outcomes.json"
    environment = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    done = subprocess.run([sys.executable, str(BENCH / "replay.py"), "--small", "--json",
                           str(out)], capture_output=True, text=True, timeout=300,
                          env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| searcher | scheduler | regret (pt) |" in done.stdout
    outcomes = json.loads(out.read_text())
    assert list(outcomes) == ["random/asha", "random/pasha", "tpe/asha", "tpe/pasha"]
    for name, runs in outcomes.items():
        assert len(runs) == 2, name  # seeds
        for run in runs:
            assert run["trials"] == 8
            assert 0 <= run["regret"] <= run["best_tried"] <= 1
            assert run["gpu_s"] > 0
            assert run["wall_s"] <= run["gpu_s"]  # 2 workers: wall time is at most the work
            assert run["complete"] >= 1  # importance and the sweep plots need COMPLETE trials
    for run in outcomes["tpe/pasha"] + outcomes["random/pasha"]:
        assert run["final_max"] in (3, 9, 12)  # the ladder from its start (rungs 1, 3, 9)
        assert run["starts"] >= run["trials"]  # a resume is a start, and costs one
    for run in outcomes["tpe/asha"]:
        assert run["starts"] == run["trials"]  # ASHA never pauses
