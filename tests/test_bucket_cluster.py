"""A sweep in a bucket on a 2-node loopback cluster whose worker sees none of the head's
folders: the worker (tests/isolated_nodes.py) has a tmpfs of its own over this test's folder
(the sweep config, the driver's state folder with the study journal, any local results) and
over Ray's temporary folder (where Tune stages a trial's files before uploading them), so the
only place the two nodes share is the bucket on the loopback S3 server (and the prepared
dataset, which issue 28 takes to the bucket). Every trial runs on the worker (the head
offers no CPU); the experiment must be whole in the bucket, and status, export and analyze
read it from the URI (analyze retraining on that worker, from the bucket)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from isolated_nodes import can_isolate, start_isolated_node
from no_ray import blocking
from sweep_runs import run_cli, sweep_command, write_sweep

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

# status of a bucket imports neither Ray nor torch, as of a folder
STATUS_WITHOUT_RAY_OR_TORCH = blocking("ray", "torch") + """
from carsweep.cli import main

sys.exit(main(["status", sys.argv[1]]))
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_isolate(), reason="mount namespaces need root")]


@pytest.fixture
def cluster_without_shared_folders(s3_bucket, tmp_path):
    """(cluster, worker node id): a head with no CPU and a worker with 2, in a mount
    namespace of its own, joined after the bucket's credentials are in the environment."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "object_store_memory": 80 * 1024**2})
    worker = start_isolated_node(cluster.address, [tmp_path, Path("/tmp/ray")], num_cpus=2)
    try:
        yield cluster, worker.node_id
    finally:
        worker.stop()
        cluster.shutdown()


def test_a_sweep_whose_worker_shares_only_the_bucket_stores_it_whole_there(
        cluster_without_shared_folders, s3_bucket, prepared_dataset, tmp_path, monkeypatch):
    cluster, worker = cluster_without_shared_folders
    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "head"))
    config = write_sweep(tmp_path, "apart", max_concurrent_trials=2)
    experiment = f"{s3_bucket}/results/apart"
    done = run_cli(sweep_command(config, prepared_dataset, f"{s3_bucket}/results",
                                 "--address", cluster.address), 300)
    assert done.returncode == 0, done.stderr[-3000:]

    table = load_experiment(experiment).trials
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"]
    assert list(table["epochs_run"]) == [2, 2]
    bucket = location(experiment)
    files = bucket.files()
    for name in (SWEEP_FILE, STUDY_FILE, TRIALS_FILE, TUNER_FILE):
        assert name in files, sorted(files)
    for trial in table.itertuples():
        rows = [json.loads(line) for line in
                (bucket / trial.trial_dir / "result.json").read_text().splitlines()]
        assert {row["node_id"] for row in rows} == {worker}  # trained where nothing is shared
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
