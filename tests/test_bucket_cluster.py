"""Issues 27 and 28 end to end: a sweep whose experiment and dataset are both in a bucket, on a
2-node loopback cluster whose worker shares nothing with the head but the bucket, its driver
killed and resumed on a new head. The worker (tests/isolated_nodes.py) has a tmpfs of its own
over this test's folder (the config, the drivers' state folders with the study journal, the
staged source, the cache folder: its mirror and caches go there) and over Ray's temporary
folder (where Tune stages a trial's files before uploading them). Every trial runs on the
worker (the head offers no CPU).

The source is uploaded, prepared from the bucket into the bucket, and swept with `--data
s3://...`: an object with other bytes than prepare hashed stops the sweep before launch, one
line naming the worker and the object; put back, the worker's mirror keeps what it had
fetched, fetches the rest, and its decoded cache is built from it. The driver is killed
(SIGKILL) once a trial has finished; `resume` from the URI by a driver with nothing of the
sweep (another CARSWEEP_STATE_DIR: no study journal) finishes it, the finished trial not
trained again. Then status (without Ray or torch), export and analyze read it from the URI,
analyze retraining on the worker after mirroring the test split there; the head's mirror
holds only what its drivers read."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
from isolated_nodes import can_isolate, start_isolated_node
from no_ray import blocking
from sweep_runs import (
    output,
    process_exited,
    run_cli,
    start_cli,
    stop,
    sweep_command,
    wait_until,
    write_sweep,
)
from test_driver_crash import command_line, descendants

from carsweep.cli import main
from carsweep.config.files import (
    ANALYSIS_DIR,
    REPORT_FILE,
    STUDY_FILE,
    SWEEP_FILE,
    TRIALS_FILE,
    TUNER_FILE,
    trial_dir_name,
)
from carsweep.data.manifest import load_dataset
from carsweep.data.mirror import LOCK_FILE, VERIFIED_FILE
from carsweep.results import load_experiment, open_study
from carsweep.results.export import load_export
from carsweep.results.store import read_result_rows
from carsweep.search.preflight.dry_step import DRY_BATCH
from carsweep.storage import location

TRAIN_VAL, TEST = 96, 32  # the shared synthetic dataset at val fraction 0.25

# status of a bucket imports neither Ray nor torch, as of a folder
STATUS_WITHOUT_RAY_OR_TORCH = blocking("ray", "torch") + """
from carsweep.cli import main

sys.exit(main(["status", sys.argv[1]]))
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_isolate(), reason="mount namespaces need root")]


@pytest.fixture
def cluster_without_shared_folders(s3_bucket, tmp_path, monkeypatch):
    """(cluster, worker node): a head with no CPU and a worker with 2, in a mount
    namespace of its own, joined after the bucket's credentials are in the environment; the
    cache folder (decoded caches, mirrors) is in this test's folder, so each node has its own."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("CARSWEEP_CACHE_DIR", str(tmp_path / "caches"))
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


def prepared_in_the_bucket(source: Path, bucket: str) -> tuple[str, str]:
    """(source URI, dataset URI): the source uploaded, prepared from the bucket into it."""
    uploaded, data = f"{bucket}/source", f"{bucket}/data"
    location(uploaded).upload_tree(source)
    assert main(["prepare", uploaded, "--out", data, "--val-fraction", "0.25"]) == 0
    return uploaded, data


def test_a_sweep_and_its_dataset_in_a_bucket_survive_a_killed_driver_on_a_worker_sharing_nothing(
        cluster_without_shared_folders, s3_bucket, synthetic_source, tmp_path, monkeypatch):
    cluster, worker = cluster_without_shared_folders
    label = f"127.0.0.1/{worker.node_id[:8]}"
    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "head-1"))
    source, data = prepared_in_the_bucket(synthetic_source, s3_bucket)
    dataset = load_dataset(data)
    assert len(dataset.rows("train", "val")) == TRAIN_VAL
    # data_cache auto (the default): the worker's cache is built from its mirror, and the
    # decoding path (the retrain's test split, the temperature's val) reads mirrors too
    config = write_sweep(tmp_path, "apart", {"data_cache": "auto"}, max_concurrent_trials=1)
    experiment = f"{s3_bucket}/results/apart"
    sweep = sweep_command(config, data, f"{s3_bucket}/results", "--address", cluster.address)

    # An image with other bytes than prepare hashed (the dry step reads the first ones): the
    # worker's mirror refuses it before any trial, in one line, and nothing is written.
    changed = location(source) / dataset.rows("val")["path"].iloc[-1]
    original = changed.read_bytes()
    changed.write_bytes((synthetic_source / dataset.rows("train")["path"][0]).read_bytes())
    refused = run_cli(sweep, 300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    # (beside the warning that one trial at a time leaves a slot idle)
    errors = [line for line in refused.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, refused.stderr
    assert errors[0].startswith(f"carsweep sweep: error: mirror on node {label}: "
                                f"{changed}: its bytes have sha1 "), refused.stderr
    assert not location(f"{s3_bucket}/results").files()
    changed.write_bytes(original)

    process = start_cli(sweep, tmp_path / "logs", live_results=True)
    try:
        wait_until(lambda: [t for t, e in epochs_in_bucket(experiment).items() if e[-1:] == [2]],
                   "a finished trial in the bucket", 240, process, every=0.2)
        kill_driver(process, worker)
    finally:
        stop(process)
    printed = output(process)[0]
    assert (f"mirror on node {label}: mirroring {TRAIN_VAL} of {TRAIN_VAL} images from "
            f"{source} into ") in printed, printed[-3000:]
    fetched = re.search(rf"mirror on node {re.escape(label)}: fetched (\d+), kept (\d+): "
                        rf"{TRAIN_VAL} images in ", printed)
    assert fetched, printed[-3000:]
    assert int(fetched[2]) > 0  # the refused mirror's good files were kept, not fetched again
    assert int(fetched[1]) + int(fetched[2]) == TRAIN_VAL
    built = printed.index(f"cache 32px on node {label}: built, {TRAIN_VAL} images")
    assert built > printed.index(fetched[0])  # from the mirror, once it was whole
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
    # The head's mirror: the dry step's images only (both drivers read the same ones).
    head_mirror = tmp_path / "caches/images/s3" / location(source).fs_path
    assert len(mirrored(head_mirror)) == 3 * DRY_BATCH

    status = run_cli([sys.executable, "-c", STATUS_WITHOUT_RAY_OR_TORCH, experiment], 120)
    assert status.returncode == 0, status.stderr[-2000:]
    best = table.iloc[0]
    assert f"best trial: {best.trial_id}" in status.stdout
    exported = run_cli([sys.executable, "-m", "carsweep", "export", experiment, "--out",
                        str(tmp_path / "best.pt")], 300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert f"from {experiment}" in exported.stdout
    assert load_export(tmp_path / "best.pt").source["trial_id"] == best.trial_id
    # analyze retrains on the cluster the sweep ran on: on the worker, from the bucket, after
    # mirroring the test split there
    analyzed = run_cli([sys.executable, "-m", "carsweep", "analyze", experiment, "--epochs",
                        "1", "--device", "cpu"], 300)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert f"retrain task(s) on the Ray cluster at {cluster.address}" in analyzed.stdout
    assert re.search(rf"on node {re.escape(label)} \(.*\) mirror: mirroring {TEST} of "
                     rf"{TRAIN_VAL + TEST} images from {source}", analyzed.stdout), (
        analyzed.stdout[-3000:])
    assert f"analysis written: {experiment}/{ANALYSIS_DIR}" in analyzed.stdout
    assert (bucket / ANALYSIS_DIR / REPORT_FILE).is_file()
    # and the head read val (the temperature) and test (the gallery, with a training example
    # of each class it shows): no more of train than the dry step's and those
    held = {p.relative_to(head_mirror).as_posix() for p in mirrored(head_mirror)}
    assert set(dataset.rows("val", "test")["path"]) <= held
    assert len(held & set(dataset.rows("train")["path"])) <= 2 * DRY_BATCH + dataset.num_classes


def mirrored(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()
            and p.name not in (VERIFIED_FILE, LOCK_FILE)]
