"""A sweep whose experiment lives in a bucket, end to end against an S3-compatible server on
127.0.0.1 (tests/bucket_server.py): `carsweep sweep --storage s3://...` (2 trials, 2 epochs,
32 px), then `status` (without Ray), `analyze` and `export` from the URI. (The test of a
driver killed and resumed on a new head, commit b7900bc, failed 2 of 5 runs and is out of
the suite until fixed: docs/cluster.md, "Known problem".)"""

from __future__ import annotations

import subprocess
import sys

import pytest
from no_ray import blocking
from sweep_runs import (
    cli_env,
    run_cli,
    sweep_command,
    write_sweep,
)

from carsweep.config.files import (
    ANALYSIS_DIR,
    REPORT_FILE,
    STUDY_FILE,
    SWEEP_FILE,
    TRIALS_FILE,
    TUNER_FILE,
)
from carsweep.results import load_experiment
from carsweep.results.export import load_export
from carsweep.storage import location

pytestmark = pytest.mark.slow

STATUS_WITHOUT_RAY_OR_TORCH = blocking("ray", "torch") + """
from carsweep.cli import main

sys.exit(main(["status", sys.argv[1]]))
"""


def carsweep(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "carsweep", *args], timeout)


@pytest.fixture
def bucket_sweep(s3_bucket, prepared_dataset, tmp_path, monkeypatch):
    """A finished 2-trial sweep in s3://<bucket>/results/tiny, run from a driver whose local
    state (the study journal) is in tmp_path/head."""
    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "head"))
    config = write_sweep(tmp_path, "tiny")
    storage = f"{s3_bucket}/results"
    done = run_cli(sweep_command(config, prepared_dataset, storage, "--num-cpus", "2"), 300)
    assert done.returncode == 0, done.stderr[-3000:]
    return f"{storage}/tiny"


def test_a_sweep_stores_its_experiment_in_the_bucket(bucket_sweep, tmp_path):
    experiment = location(bucket_sweep)
    files = experiment.files()
    for name in (SWEEP_FILE, STUDY_FILE, TRIALS_FILE, TUNER_FILE):
        assert name in files, sorted(files)
    for trial in load_experiment(bucket_sweep).trials.itertuples():
        assert f"{trial.trial_dir}/result.json" in files
        assert f"{trial.best_checkpoint}/checkpoint.pt" in files
        assert any(name.startswith(f"{trial.trial_dir}/events.out.tfevents") for name in files)
    table = load_experiment(bucket_sweep).trials
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"]
    assert list(table["epochs_run"]) == [2, 2]

    status = subprocess.run([sys.executable, "-c", STATUS_WITHOUT_RAY_OR_TORCH, bucket_sweep],
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert status.returncode == 0, status.stderr[-2000:]
    best = table.iloc[0]
    assert f"best trial: {best.trial_id}" in status.stdout

    exported = carsweep("export", bucket_sweep, "--out", str(tmp_path / "best.pt"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert f"from {bucket_sweep}" in exported.stdout
    assert load_export(tmp_path / "best.pt").source["trial_id"] == best.trial_id

    analyzed = carsweep("analyze", bucket_sweep, "--epochs", "1", "--device", "cpu")
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert f"analysis written: {bucket_sweep}/{ANALYSIS_DIR}" in analyzed.stdout
    assert (experiment / ANALYSIS_DIR / REPORT_FILE).is_file()
