"""bench/gpu_smoke.py, the GPU smoke run of the product's own code, proves its plumbing on the
CPU (--smoke): every stage ran through carsweep's own functions and CLI, and the JSON holds
what each measured."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_smoke.py"
sys.path.insert(0, str(BENCH.parent))

import gpu_smoke  # noqa: E402


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
    assert stages["trials"]["device_peak_bytes"] is None  # no CUDA: nothing sampled
    for run in runs:  # what each trial paid before training at speed, its parts summed
        parts = ("process_start_s", "imports_s", "setup_s", "warm_up_s")
        assert run["fixed_s"] == pytest.approx(sum(run[part] for part in parts), abs=0.02)
        assert run["imports_s"] > 0.5  # torch and carsweep's trainable, in a fresh process
        assert run["epoch_s"] > 0
    assert [stages[name]["exit_code"] for name in ("train", "export", "predict")] == [0, 0, 0]
    assert stages["export"]["bytes"] > 40e6  # ResNet-18's weights
    predictions = stages["predict"]["predictions"]
    assert len(predictions) == stages["predict"]["images"] == 6
    assert all(len(p["top"]) == 5 for p in predictions)
    assert len(stages["predict"]["cams"]) == 6  # a Grad-CAM overlay per image


def test_a_trials_fixed_cost_is_its_start_imports_setup_and_first_epochs_warm_up():
    # 0.5 s to start, 4 s of imports, the first report 13 s after train() began, after an
    # epoch of 10 s (its first) that takes 7 s at speed: setup 3 s, warm-up 3 s
    cost = gpu_smoke.fixed_cost(0.5, 4.0, 13.0, [10.0, 7.0])
    assert cost == {"process_start_s": 0.5, "imports_s": 4.0, "setup_s": 3.0,
                    "warm_up_s": 3.0, "fixed_s": 10.5, "epoch_s": 7.0}


def test_the_gpus_whole_use_is_sampled_while_the_trials_run(monkeypatch):
    """Only the driver's answers are made up: mem_get_info's (free, total) as trials start and
    stop, the sampler's thread and arithmetic as they run on a GPU."""
    import threading

    import torch

    total = 80 << 30
    used = iter([1 << 30] + [5 << 30] * 3 + [9 << 30] * 3 + [2 << 30] * 1000)
    lock = threading.Lock()

    def mem_get_info(device=None):
        with lock:
            return total - next(used), total

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    with gpu_smoke.DeviceMemoryPeak(every_s=0.001) as memory:
        waited = time.monotonic()
        while memory.peak < 9 << 30 and time.monotonic() - waited < 10:  # the trials run
            time.sleep(0.001)
    assert memory.baseline == 1 << 30  # in use before: this process's context among it
    assert memory.used_bytes == 8 << 30  # the peak, less what was in use before
