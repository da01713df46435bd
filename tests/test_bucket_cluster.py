"""A sweep in a bucket on a 2-node loopback cluster whose worker sees none of the head's
folders, its driver killed and resumed on a new head: the issue's end-to-end test. The worker
(tests/isolated_nodes.py) has a tmpfs of its own over this test's folder (the sweep config,
the drivers' state folders with the study journal, any local results) and over Ray's
temporary folder (where Tune stages a trial's files before uploading them), so the only place
the nodes share is the bucket on the loopback S3 server (and the prepared dataset, which issue
28 takes to the bucket). Every trial runs on the worker (the head offers no CPU). The driver is
killed (SIGKILL) once a trial has finished; `resume` from the URI by a driver with nothing of
the sweep (another CARSWEEP_STATE_DIR: no study journal) finishes it, the finished trial not
trained again; then status, export and analyze read it from the URI (analyze retraining on
that worker, from the bucket)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from isolated_nodes import can_isolate, start_isolated_node
from no_ray import blocking
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

# status of a bucket imports neither Ray nor torch, as of a folder
STATUS_WITHOUT_RAY_OR_TORCH = blocking("ray", "torch") + """
from carsweep.cli import main

sys.exit(main(["status", sys.argv[1]]))
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_isolate(), reason="mount namespaces need root")]


@pytest.fixture
def cluster_without_shared_folders(s3_bucket, tmp_path):
    """(cluster, worker node): a head with no CPU and a worker with 2, in a mount
    namespace of its own, joined after the bucket's credentials are in the environment."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "object_store_memory": 80 * 1024**2})
    worker = start_isolated_node(cluster.address, [tmp_path, Path("/tmp/ray")], num_cpus=2)
    try:
        yield cluster, worker
    finally:
        worker.stop()
        cluster.shutdown()


def epochs_in_bucket(experiment: str) -> dict[str, list[int]]:
    """The epoch of every row each trial's result.json in the bucket holds."""
    folder = location(experiment).listed()
    trials = {name.split("/", 1)[0] for name in folder.files() if name.startswith("trial_")}
    return {trial: [int(row["epoch"]) for row in read_result_rows(folder / trial)]
            for trial in sorted(trials)}


def kill_driver(process, worker_node) -> None:
    """SIGKILL the sweep's driver, then wait until Ray has ended its trials on the worker
    (their owner is gone), so that none writes to the bucket while the resume runs."""
    trials = {pid for pid in descendants(worker_node.process.pid)
              if command_line(pid).startswith("ray::")
              and not any(word in command_line(pid) for word in ("IDLE", "Agent"))}
    assert trials, "no trial process on the worker"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    wait_until(lambda: all(map(process_exited, trials)), "the killed driver's trials to end", 60)


def test_a_sweep_whose_worker_shares_only_the_bucket_survives_its_driver_and_is_read_from_it(
        cluster_without_shared_folders, s3_bucket, prepared_dataset, tmp_path, monkeypatch):
    cluster, worker = cluster_without_shared_folders
    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "head-1"))
    config = write_sweep(tmp_path, "apart", max_concurrent_trials=1)
    experiment = f"{s3_bucket}/results/apart"
    process = start_cli(sweep_command(config, prepared_dataset, f"{s3_bucket}/results",
                                      "--address", cluster.address),
                        tmp_path / "logs", live_results=True)
    try:
        wait_until(lambda: [t for t, e in epochs_in_bucket(experiment).items() if e[-1:] == [2]],
                   "a finished trial in the bucket", 240, process, every=0.2)
        kill_driver(process, worker)
    finally:
        stop(process)
    finished = [trial for trial, epochs in epochs_in_bucket(experiment).items()
                if epochs == [1, 2]]
    assert finished

    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "head-2"))  # a new head
    resumed = run_cli([sys.executable, "-m", "carsweep", "resume", experiment, "--address",
                       cluster.address], 300)
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
    bucket = location(experiment)
    files = bucket.files()
    for name in (SWEEP_FILE, STUDY_FILE, TRIALS_FILE, TUNER_FILE):
        assert name in files, sorted(files)
    for trial in table.itertuples():
        rows = read_result_rows(bucket / trial.trial_dir)
        assert {row["node_id"] for row in rows} == {worker.node_id}  # nothing shared there
        assert f"{trial.best_checkpoint}/checkpoint.pt" in files
        assert any(name.startswith(f"{trial.trial_dir}/events.out.tfevents") for name in files)
    assert not (tmp_path / "results").exists()  # nothing written beside the driver

    status = run_cli([sys.executable, "-c", STATUS_WITHOUT_RAY_OR_TORCH, experiment], 120)
    assert status.returncode == 0, status.stderr[-2000:]
    best = table.iloc[0]
    assert f"best trial: {best.trial_id}" in status.stdout
    exported = run_cli([sys.executable, "-m", "carsweep", "export", experiment, "--out",
                        str(tmp_path / "best.pt")], 300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert f"from {experiment}" in exported.stdout
    assert load_export(tmp_path / "best.pt").source["trial_id"] == best.trial_id
    # analyze retrains on the cluster the sweep ran on: on the worker, from the bucket
    analyzed = run_cli([sys.executable, "-m", "carsweep", "analyze", experiment, "--epochs",
                        "1", "--device", "cpu"], 300)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert f"retrain task(s) on the Ray cluster at {cluster.address}" in analyzed.stdout
    assert f"analysis written: {experiment}/{ANALYSIS_DIR}" in analyzed.stdout
    assert (bucket / ANALYSIS_DIR / REPORT_FILE).is_file()
