"""bench/export_all.py: one backbone through the product's export, its row and summary."""

from __future__ import annotations

import pytest
from bench_runs import run_bench

from carsweep.results.sameness import PROB_TOLERANCE


@pytest.mark.slow
def test_export_all_proves_a_backbone_and_writes_its_row(tmp_path):
    result, printed = run_bench("export_all.py", "--only", "squeezenet1_1",
                                out=tmp_path / "rows.json")
    assert "1/1 exported and proved; refused: none" in printed
    (row,) = result["rows"]
    assert (row["model"], row["size"], row["outcome"]) == ("squeezenet1_1", 64, "ok")
    assert set(row["proofs"]) == {"ONNX Runtime", "torch.export .pt2"}
    for proof in row["proofs"].values():
        assert proof["images"] == 17
        assert proof["max_delta"] <= PROB_TOLERANCE
        assert proof["top1_equal"] == proof["decided"] >= 12  # not a proof on ties
    assert result["refused"] == {}
