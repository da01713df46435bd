"""A sweep whose experiment lives in a bucket (an S3-compatible server on 127.0.0.1,
tests/bucket_server.py), its driver killed, then `resume` on a head that has nothing of the
sweep locally. The sweep in a bucket, then status, export and analyze from its URI, on a
cluster whose worker shares nothing else: tests/test_bucket_cluster.py."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from sweep_runs import (
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
    STUDY_FILE,
    trial_dir_name,
)
from carsweep.results import load_experiment, open_study
from carsweep.results.store import read_result_rows
from carsweep.storage import location

pytestmark = pytest.mark.slow

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
    resumed = run_cli([sys.executable, "-m", "carsweep", "resume", experiment, "--num-cpus",
                       "1"], 300)
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
