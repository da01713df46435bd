"""A sweep whose experiment lives in a bucket, end to end against an S3-compatible server on
127.0.0.1 (tests/bucket_server.py): `carsweep sweep --storage s3://...` (2 trials, 2 epochs,
32 px), then `status` (without Ray), `analyze` and `export` from the URI, and `resume` on a
head that has nothing of the sweep locally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from no_ray import blocking
from sweep_runs import (
    cli_env,
    process_exited,
    run_cli,
    start_cli,
    stop,
    sweep_command,
    wait_until,
    write_sweep,
)
from test_driver_crash import command_line, descendants

from carsweep.config.files import (
    ANALYSIS_DIR,
    REPORT_FILE,
    STUDY_FILE,
    SWEEP_FILE,
    TRIALS_FILE,
    TUNER_FILE,
    trial_dir_name,
)
from carsweep.results import load_experiment, open_study
from carsweep.results.export import load_export
from carsweep.results.store import read_result_rows
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


def epochs_in_bucket(experiment: str) -> dict[str, list[int]]:
    """The epoch of every row each trial's result.json in the bucket holds."""
    folder = location(experiment).listed()
    trials = {name.split("/", 1)[0] for name in folder.files() if name.startswith("trial_")}
    return {trial: [int(row["epoch"]) for row in read_result_rows(folder / trial)]
            for trial in sorted(trials)}


def test_a_killed_driver_resumes_on_a_new_head_from_the_bucket(s3_bucket, prepared_dataset,
                                                                 tmp_path, monkeypatch):
    """The driver is killed (SIGKILL) once a trial has finished; `resume` from the URI on a
    head with nothing of the sweep (another CARSWEEP_STATE_DIR: no study journal) finishes
    it: the finished trial does not train again, the study in the bucket holds each trial
    once."""
    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "head-1"))
    config = write_sweep(tmp_path, "killed", max_concurrent_trials=1)
    experiment = f"{s3_bucket}/results/killed"
    command = sweep_command(config, prepared_dataset, f"{s3_bucket}/results", "--num-cpus", "1")
    process = start_cli(command, tmp_path / "logs", live_results=True)
    try:
        wait_until(lambda: [t for t, e in epochs_in_bucket(experiment).items() if e[-1:] == [2]],
                   "a finished trial in the bucket", 240, process, every=0.2)
        # Ray's GCS, raylet and trial workers; not its monitoring agents, which notice their
        # raylet is gone a minute or two later and write nothing of ours.
        family = {pid for pid in descendants(process.pid) if "Agent" not in command_line(pid)}
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)
    deadline = time.monotonic() + 60  # its Ray and trials share its fate
    while not all(map(process_exited, family)) and time.monotonic() < deadline:
        time.sleep(0.5)
    before = epochs_in_bucket(experiment)
    finished = [trial for trial, epochs in before.items() if epochs == [1, 2]]
    assert finished, before

    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "head-2"))  # a new head
    resumed = carsweep("resume", experiment, "--num-cpus", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    table = load_experiment(experiment).trials
    assert table["trial_id"].is_unique
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"]
    assert list(table["epochs_run"]) == [2, 2]
    after = epochs_in_bucket(experiment)
    for trial in finished:
        assert after[trial] == [1, 2]  # not trained again
    study = open_study(experiment)
    assert sorted(trial_dir_name(t.user_attrs["trial_id"]) for t in study.trials) == sorted(
        trial_dir_name(t) for t in table["trial_id"])
    assert list((tmp_path / "head-2").rglob(STUDY_FILE))  # fetched for the searcher
