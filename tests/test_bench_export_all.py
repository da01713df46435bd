"""bench/export_all.py: one backbone through the product's export, its row and summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carsweep.results.sameness import PROB_TOLERANCE

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_export_all_proves_a_backbone_and_writes_its_row(tmp_path):
    out = tmp_path / "rows.json"
    environment = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    done = subprocess.run([sys.executable, str(BENCH / "export_all.py"), "--only",
                           "squeezenet1_1", "--json", str(out)], capture_output=True, text=True,
                          timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "load average" in done.stdout
    assert "1/1 exported and proved; refused: none" in done.stdout
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert (row["model"], row["size"], row["outcome"]) == ("squeezenet1_1", 64, "ok")
    assert set(row["proofs"]) == {"ONNX Runtime", "torch.export .pt2"}
    for proof in row["proofs"].values():
        assert proof["images"] == 17
        assert proof["max_delta"] <= PROB_TOLERANCE
        assert proof["top1_equal"] == proof["decided"] >= 12  # not a proof on ties
    assert result["refused"] == {}
