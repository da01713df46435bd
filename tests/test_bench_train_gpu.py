"""bench/train_gpu.py runs without Ray, Optuna or TensorBoard (a GPU box carries only what
carsweep.trainable needs), here in its CPU smoke mode; its carsweep rows time the product's own
epoch."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_gpu.py"
BLOCKED = ("ray", "optuna", "optuna_dashboard", "tensorboard", "tensorboardX", "matplotlib")
RUNNER = textwrap.dedent(f"""
    import importlib.abc, importlib.machinery, runpy, sys

    class Missing(importlib.abc.Loader):
        # Found by find_spec probes (as torch does), but importing it fails like a missing one.
        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {{spec.name!r}} (bare box)",
                                      name=spec.name)

        def exec_module(self, module):
            pass

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                return importlib.machinery.ModuleSpec(name, Missing())
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.slow
def test_smoke_run_needs_no_ray_and_times_the_products_epoch(tmp_path):
    out = tmp_path / "bench.json"
    traced = tmp_path / "trace.json.gz"
    done = subprocess.run([sys.executable, "-c", RUNNER, str(BENCH), "--smoke", "--json",
                           str(out), "--trace", str(traced)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {(r["style"], r["mode"]) for r in result["rows"]}
    assert rows == {(s, m) for s in ("seed", "carsweep") for m in ("model-only", "full trial")}
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    # 2 FLOPs per multiply-add, forward + backward: ResNet-18 at 224 px is ~10.6 GFLOPs,
    # so at 32 px (x (32/224)^2, plus the head) about 0.22.
    assert all(0.18 < r["gflops_per_image"] < 0.3 for r in result["rows"])
    assert [s["processes"] for s in result["sharing"]] == [2]  # side by side, as on the GPU
    assert all(s["total_images_per_s"] > 0 for s in result["sharing"])
    assert "carsweep/seed" in done.stdout
    assert result["carsweep_step"] == "carsweep.trainable.loop.train_one_epoch"
    # the profiler's trace of the product's steps: a Chrome trace of its convolutions and
    # optimizer, small enough to bring back from a GPU machine
    assert result["trace"] == {"size": 32, "batch": 4, "steps": 5, "path": str(traced),
                               "bytes": traced.stat().st_size}
    assert traced.stat().st_size < 16 << 20
    events = {event.get("name") for event in json.loads(gzip.decompress(
        traced.read_bytes()))["traceEvents"]}
    assert {"aten::convolution", "aten::cudnn_convolution"} & events
    assert any(name and name.startswith("Optimizer.step") for name in events)
