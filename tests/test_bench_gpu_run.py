"""bench/gpu_run.sh, the one command of the GPU machine's run, on the CPU (--smoke): each stage
leaves its line in stages.jsonl and its files, and the run's budget skips what it cannot fit
rather than let the device call's limit cut it off with nothing said."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_run(tmp_path: Path, *stages: str, budget: int = 480) -> list[dict]:
    """`bash bench/gpu_run.sh --smoke STAGES` with this interpreter's packages (none carried)."""
    out = tmp_path / "out"
    environment = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"),
                   "SITE": str(tmp_path / "site"), "CARRIED": str(tmp_path / "none"),
                   "BUDGET": str(budget),
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_run.sh"), "--smoke", *stages],
                          capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith(f"== done: {out}")
    return [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_each_stage_asked_for_runs_and_says_how_it_ended(tmp_path):
    stages = gpu_run(tmp_path, "env", "ops")
    assert [(s["stage"], s["exit_code"]) for s in stages] == [
        ("install", 0), ("env", 0), ("ops", 0)]
    assert all(0 <= s["seconds"] <= s["cap_seconds"] for s in stages)
    env = json.loads((tmp_path / "out" / "env.json").read_text())
    import torch

    assert (env["torch"], env["cuda_available"]) == (torch.__version__, False)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    imported = ("ray", "optuna", "pydantic", "kornia", "torchcam")  # what .gpu/ carries
    assert {name: env[name] for name in imported} == {
        name: metadata.version(name) for name in imported}
    ops = json.loads((tmp_path / "out" / "ops.json").read_text())
    assert ops["size"] == 32  # bench/augment_ops.py --small's figures
    assert {"flip", "random-crop"} <= {row["preset"] for row in ops["rows"]}
    assert not (tmp_path / "out" / "smoke.log").exists()  # a stage not asked for never ran


def test_a_stage_the_budget_cannot_fit_is_skipped_and_said(tmp_path):
    stages = gpu_run(tmp_path, "env", budget=10)
    assert stages == [
        {"stage": "install", "skipped": "the run's 10 s are spent"},
        {"stage": "env", "skipped": "the run's 10 s are spent"}]
