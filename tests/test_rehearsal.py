"""The rehearsal: Stanford Cars' shape on a cluster whose nodes each have their own disk.

A loopback Ray cluster of three nodes: a head without GPU (where the driver runs) and two
workers that declare one logical GPU each, every worker in its own mount namespace with a
tmpfs of its own over the cache folder (tests/isolated_nodes.py), as real GPU nodes have local
disks. The dataset is Cars-shaped (196 classes of 700x480 JPEGs, a few per class) on the
machine's disk, which every node sees, as NFS would be. A sweep with half a GPU per trial (the
trainable computes on the CPU, `device: cpu`: torch there has no CUDA), then `analyze` on the
cluster. It shows:

- every trial's results readable on the driver, and trials only on the GPU workers;
- each worker's caches built once, before any trial started, on its own disk (the head's
  folder stays empty), each size once;
- checkpoints only where the sweep's policy asks (ASHA's rungs and the last epoch);
- analyze's retrain ran on a worker node, as metrics.json says;
- a worker whose storage folder is its own disk: the sweep refused before launch, in one line
  naming that node, nothing written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from isolated_nodes import can_isolate, start_isolated_node
from sweep_runs import result_rows

from carsweep.cli import main
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth_cars import make_cars_dataset

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_isolate(), reason="mount namespaces need root")]
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 196, 4, 1
SIZES = [32, 40]
EPOCHS = 3  # ASHA grace 1, reduction factor 3: a rung at epoch 1, max_t 3; epoch 2 is neither
NODE_STORE = 300 * 1024**2  # object store: start weights and a retrain's weights pass through
# What is rehearsed is the cluster, not the model: SqueezeNet 1.1 trains 7x ResNet-18's images/s
# on one core at 32 px (the sweep took 93 s with ResNet-18, 24 s with it).
MODEL = "squeezenet1_1"


def sweep_yaml(folder: Path, cache_dir: Path) -> Path:
    config = {
        "name": "rehearsal", "num_samples": 4, "max_concurrent_trials": 2,
        "resources": {"cpu": 1, "gpu": 0.5}, "max_failures": 0,
        "asha": {"grace_period": 1, "reduction_factor": 3},
        "searcher": {"seed": 0, "n_startup_trials": 4},
        "space": {"model": MODEL, "optimizer": "adam",
                  "lr": {"loguniform": [3.0e-4, 3.0e-3]},
                  "epochs": EPOCHS, "batch_size": 32, "resize": {"choice": SIZES},
                  "augmentation": "flip", "weights": "none", "num_workers": 0,
                  "device": "cpu",  # the workers' GPUs are logical: train on their CPUs
                  "data_cache": "on", "cache_dir": str(cache_dir)},
    }
    path = folder / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def cars(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cars")
    source = make_cars_dataset(root / "source", classes=CLASSES, per_class=TRAIN_PER_CLASS,
                               test_per_class=TEST_PER_CLASS, progress=False)
    return prepare_dataset(source, root / "data", split="official", val_fraction=0.25, seed=0,
                           warn=lambda line: None).folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(cluster, [worker, worker], the cache folder every worker has its own tmpfs over)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cache_dir = tmp_path_factory.mktemp("node-local") / "cache"
    cache_dir.mkdir()
    head = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "object_store_memory": NODE_STORE,
        "include_dashboard": False})
    workers = [start_isolated_node(head.address, [cache_dir], num_cpus=1, num_gpus=1,
                                   object_store_memory=NODE_STORE) for _ in range(2)]
    try:
        yield head, workers, cache_dir
    finally:
        for worker in workers:
            worker.stop()
        head.shutdown()


@pytest.fixture(scope="module")
def swept(cluster, cars, tmp_path_factory) -> tuple[Path, str]:
    """The sweep, joined by address as on a real head node: (experiment, its console)."""
    head, _workers, cache_dir = cluster
    folder = tmp_path_factory.mktemp("launch")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(["sweep", str(sweep_yaml(folder, cache_dir)), "--data", str(cars),
                     "--storage", str(folder / "results"), "--address", head.address])
    assert code == 0, printed.getvalue()[-3000:]
    return folder / "results" / "rehearsal", printed.getvalue()


def on_node(node_id: str, function, *args):
    """Run `function(*args)` in a task pinned to that node (its own mounts), return the value."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    pinned = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    with ray_joined():
        return ray.get(ray.remote(num_cpus=0)(function).options(
            scheduling_strategy=pinned).remote(*args), timeout=120)


@contextlib.contextmanager
def ray_joined():
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=os.environ["REHEARSAL_ADDRESS"], logging_level="ERROR",
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _address(cluster, monkeypatch):
    monkeypatch.setenv("REHEARSAL_ADDRESS", cluster[0].address)


def test_every_trial_ran_on_a_gpu_worker_and_reads_back_on_the_driver(swept, cluster):
    experiment, _console = swept
    head, workers, _ = cluster
    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == 4
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}  # ran all epochs, or ASHA stopped it
    assert table["best_val_top1"].notna().all()
    nodes = {row["node_id"] for rows in result_rows(experiment).values() for row in rows}
    assert nodes <= {w.node_id for w in workers}  # never the GPU-less head
    assert head.head_node.node_id not in nodes


def test_each_worker_built_each_size_once_before_any_trial(swept, cluster):
    def cache_files(folder: str) -> dict[str, float]:
        """The cache arrays in `folder` as the node sees it: name -> modification time.
        (Local, so Ray ships it by value: this test module is not importable on a worker.)"""
        return {path.name: path.stat().st_mtime for path in Path(folder).glob("*.u8.npy")}

    experiment, console = swept
    _head, workers, cache_dir = cluster
    train_val = 196 * TRAIN_PER_CLASS
    first_report = {}
    for rows in result_rows(experiment).values():
        start = rows[0]["timestamp"] - rows[0]["time_total_s"]
        first_report[rows[0]["node_id"]] = min(start, first_report.get(rows[0]["node_id"], 1e18))
    for worker in workers:
        label = f"127.0.0.1/{worker.node_id[:8]}"
        for size in SIZES:
            built = [line for line in console.splitlines()
                     if line.startswith(f"cache {size}px on node {label}: built")]
            assert len(built) == 1, console
            assert f"{train_val:,} images" in built[0]
        files = on_node(worker.node_id, cache_files, str(cache_dir))
        assert sorted(name.split("px")[0] for name in files) == [str(s) for s in SIZES]
        if worker.node_id in first_report:  # no trial rebuilt it: it predates them all
            assert max(files.values()) < first_report[worker.node_id]
    assert list(cache_dir.iterdir()) == []  # the head (and this process) never built one


def test_checkpoints_only_at_the_rung_and_the_last_epoch(swept):
    experiment, _ = swept
    kept = {}
    for rows in result_rows(experiment).values():
        for row in rows:
            kept.setdefault(int(row["epoch"]), set()).add(bool(row.get("checkpoint_dir_name")))
    assert kept[1] == {True}  # ASHA's rung: a trial stopped there keeps its last epoch
    assert kept.get(2, {False}) == {False}  # neither a rung nor the end, and under 10 minutes
    assert kept.get(EPOCHS, {True}) == {True}


def test_analyze_retrains_on_a_worker_node(swept, cluster):
    experiment, _ = swept
    _head, workers, _ = cluster
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["analyze", str(experiment), "--epochs", "1"]) == 0, printed.getvalue()
    (seed,) = json.loads((experiment / "analysis" / "metrics.json").read_text())["seeds"]
    assert seed["ran_on"] == "cluster"
    assert seed["node_id"] in {w.node_id for w in workers}


def test_a_worker_whose_storage_is_its_own_disk_is_refused_before_launch(
        cluster, cars, tmp_path, capsys):
    head, workers, cache_dir = cluster
    storage = tmp_path / "results"
    own = start_isolated_node(head.address, [cache_dir, storage], num_cpus=1, num_gpus=1,
                              object_store_memory=NODE_STORE)
    try:
        code = main(["sweep", str(sweep_yaml(tmp_path, cache_dir)), "--data", str(cars),
                     "--storage", str(storage), "--address", head.address])
    finally:
        own.stop()
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2
    assert line.startswith(f"carsweep sweep: error: pre-flight node: node 127.0.0.1/"
                           f"{own.node_id[:8]}: storage path {storage} is not shared with the "
                           "driver")
    assert list(storage.iterdir()) == []  # nothing written (the exchange folder is gone)
