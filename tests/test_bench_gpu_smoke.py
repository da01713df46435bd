"""bench/gpu_smoke.py, the GPU smoke run of the product's own code, proves its plumbing on the
CPU (--smoke): every stage ran through carsweep's own functions and CLI, and the JSON holds
what each measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_smoke.py"


@pytest.mark.slow
def test_smoke_run_goes_through_every_stage(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--json", str(out), "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert list(stages) == ["data", "real step", "trials", "train", "export", "predict"]
    assert result["trial"]["augmentation"] == "flip+snapmix"  # a device preset and a mix
    assert result["trial"]["model"] == "resnet18"
    assert (stages["data"]["classes"], stages["data"]["resize"]) == (6, 64)
    assert (stages["real step"]["device"], stages["real step"]["precision"]) == ("cpu", "fp32")
    runs = stages["trials"]["runs"]
    assert len({run["pid"] for run in runs}) == 2  # side by side, each its own process
    assert all(run["images_per_s"] > 0 and run["peak_bytes"] is None for run in runs)
    assert [stages[name]["exit_code"] for name in ("train", "export", "predict")] == [0, 0, 0]
    assert stages["export"]["bytes"] > 40e6  # ResNet-18's weights
    predictions = stages["predict"]["predictions"]
    assert len(predictions) == stages["predict"]["images"] == 6
    assert all(len(p["top"]) == 5 for p in predictions)
    assert len(stages["predict"]["cams"]) == 6  # a Grad-CAM overlay per image
