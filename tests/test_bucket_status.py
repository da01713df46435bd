"""`carsweep status` of an experiment in a bucket says how fresh it is: when the sweep's driver
uploaded the snapshot it shows, and how often a running sweep uploads (results/snapshot.py),
against the S3-compatible server on 127.0.0.1 (tests/bucket_server.py). A folder's output is
unchanged. (A real Tune snapshot read this way: tests/test_bench_bucket_io.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import optuna
import pytest
from no_ray import blocking
from optuna.distributions import FloatDistribution
from sweep_runs import cli_env

from carsweep.cli import main
from carsweep.config.files import STUDY_NAME, TRIALS_FILE
from carsweep.config.sweep import SweepConfig, save_sweep
from carsweep.results.snapshot import Snapshot, freshness_line, latest_snapshot
from carsweep.results.study import journal_storage, study_path
from carsweep.storage import location

STATUS_WITHOUT_RAY_OR_TORCH = blocking("ray", "torch") + """
from carsweep.cli import main

sys.exit(main(["status", sys.argv[1]]))
"""
NOW = datetime(2026, 12, 6, 20, 42, 30, tzinfo=UTC)


def _experiment(tmp_path: Path) -> Path:
    """An experiment folder as a sweep leaves it: sweep.yaml, the study, one trial reporting
    two epochs."""
    experiment = tmp_path / "exp"
    save_sweep(SweepConfig(name="exp", metric="val_loss", mode="min"), experiment / "sweep.yaml")
    trial = experiment / "trial_a1b2c3d4"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"epochs": 2, "lr": 0.01}))
    rows = [{"epoch": 1, "val_loss": 0.9}, {"epoch": 2, "val_loss": 0.5}]
    (trial / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    study = optuna.create_study(storage=journal_storage(study_path(experiment)),
                                study_name=STUDY_NAME)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-3, 1, log=True)},
        value=0.5, intermediate_values={1: 0.9, 2: 0.5}, user_attrs={"trial_id": "a1b2c3d4"}))
    return experiment


def _ray_state(period: str, trial_data_bytes: int = 2000) -> str:
    """An experiment state laid out as Tune's driver writes it (TuneController.save_to_dir):
    the trials first, then the runner's settings (the period among them), then stats."""
    return json.dumps({"trial_data": ["x" * trial_data_bytes],
                       "runner_data": {"_max_pending_trials": 16, "_checkpoint_period": period,
                                       "_session_str": "2026-12-06_20-41-38"},
                       "stats": {"start_time": 1796589698.2}})


@pytest.fixture
def bucket_experiment(s3_bucket, tmp_path) -> str:
    experiment = _experiment(tmp_path)
    (experiment / "experiment_state-2026-12-06_20-41-38.json").write_text(_ray_state("30"))
    uri = f"{s3_bucket}/results/exp"
    location(uri).upload_tree(experiment)
    return uri


def test_status_of_a_bucket_says_when_its_snapshot_was_uploaded(bucket_experiment, capsys):
    before = datetime.now(UTC).replace(microsecond=0)
    assert main(["status", bucket_experiment]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = datetime.strptime(lines[0].split(" as of ")[1][:8], "%H:%M:%S").time()
    assert lines[0].startswith("in the bucket as of ")
    assert lines[0].endswith(" ago (a running sweep uploads every 30 s)")
    assert before - timedelta(seconds=60) <= datetime.combine(before.date(), shown, UTC) \
        <= datetime.now(UTC)
    assert lines[1] == ""
    assert lines[2].split()[:2] == ["trial", "state"]
    assert lines[-1].startswith("best trial: a1b2c3d4  val_loss = 0.5 ")


def test_the_snapshot_is_the_newest_state_and_trials_csv_after_it_means_the_driver_ended(
        bucket_experiment):
    experiment = location(bucket_experiment)
    snapshot = latest_snapshot(experiment.listed())
    assert (snapshot.period, snapshot.driver_ended) == ("30", False)
    (experiment / TRIALS_FILE).write_text("trial_id\n")  # written at a sweep's end
    assert latest_snapshot(experiment.listed()).driver_ended
    time.sleep(1.1)  # LastModified counts whole seconds
    # a resume: a new session's state, newer than the last run's trials.csv
    (experiment / "experiment_state-2026-12-06_21-00-00.json").write_text(_ray_state("auto"))
    resumed = latest_snapshot(experiment.listed())
    assert (resumed.period, resumed.driver_ended) == ("auto", False)
    assert resumed.uploaded > snapshot.uploaded


def test_the_period_is_read_from_the_end_of_a_large_state(s3_bucket, tmp_path):
    state = location(f"{s3_bucket}/exp/experiment_state-2026-12-06_20-41-38.json")
    state.write_text(_ray_state("45", trial_data_bytes=2_000_000))  # ~ a 64-trial sweep's
    snapshot = latest_snapshot(location(f"{s3_bucket}/exp").listed())
    assert snapshot.period == "45"


def test_status_of_a_bucket_needs_neither_ray_nor_torch(bucket_experiment):
    done = subprocess.run([sys.executable, "-c", STATUS_WITHOUT_RAY_OR_TORCH, bucket_experiment],
                          capture_output=True, text=True, timeout=120, env=cli_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("in the bucket as of ")
    assert "best trial: a1b2c3d4" in done.stdout
    assert done.stderr == ""


def test_a_folder_status_is_unchanged(tmp_path, capsys):
    experiment = _experiment(tmp_path)
    (experiment / "experiment_state-2026-12-06_20-41-38.json").write_text(_ray_state("30"))
    assert main(["status", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["trial", "state"]
    assert "in the bucket" not in out


@pytest.mark.parametrize(
    ("uploaded", "period", "ended", "expected"),
    [
        (NOW - timedelta(seconds=12), "30", False,
         "in the bucket as of 20:42:18 UTC, 12 s ago (a running sweep uploads every 30 s)"),
        (NOW - timedelta(minutes=5), "auto", False,
         "in the bucket as of 20:37:30 UTC, 5 min ago (a running sweep uploads every 10 s or "
         "more (Ray's automatic period))"),
        (NOW - timedelta(hours=3, minutes=5), "30", True,
         "in the bucket as of 17:37:30 UTC, 3 h 5 min ago (the sweep's last upload: its "
         "driver has ended)"),
        (NOW - timedelta(days=3), None, False,
         "in the bucket as of 2026-12-03 20:42:30 UTC, 3 days ago"),
        (NOW + timedelta(seconds=2), "7.5", False,  # the store's clock a little ahead
         "in the bucket as of 20:42:32 UTC, 0 s ago (a running sweep uploads every 7.5 s)"),
    ],
)
def test_the_freshness_line(uploaded, period, ended, expected):
    assert freshness_line(Snapshot(uploaded, period, ended), NOW) == expected


def test_before_the_first_snapshot_the_line_says_so():
    assert freshness_line(None, NOW) == ("in the bucket: no snapshot of the sweep's driver yet "
                                         "(its first comes when the trials start)")


def test_a_bucket_sweep_snapshots_every_30_s_a_folder_at_rays_pace_a_users_export_wins(
        s3_bucket, monkeypatch, tmp_path):
    from carsweep.search.tuner import _snapshot_period
    from carsweep.storage import location

    bucket = location(f"{s3_bucket}/results/sweep")
    monkeypatch.setattr(os, "environ", {})  # what Tune's driver will read, this test's own
    with _snapshot_period(bucket):
        assert os.environ == {"TUNE_GLOBAL_CHECKPOINT_S": "30"}
    assert os.environ == {}  # the next sweep in this process may be a folder's
    with _snapshot_period(tmp_path / "sweep"):
        assert os.environ == {}  # Ray's own `auto`
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "5"  # a user's export
    with _snapshot_period(bucket):
        assert os.environ == {"TUNE_GLOBAL_CHECKPOINT_S": "5"}
    assert os.environ == {"TUNE_GLOBAL_CHECKPOINT_S": "5"}
