"""Storage and dataset proven shared, not just present: a node with its own disk is refused.

A loopback cluster of a head node and one worker in its own mount namespace
(tests/isolated_nodes.py): at two paths the worker has a tmpfs of its own, one empty (where a
sweep's storage will be asked for) and one holding another preparation of the dataset. The
driver sees the machine's folders there. `sweep --check` must name that worker, in one line,
and leave nothing behind in the storage. The same for a storage bucket that the worker cannot
reach (its endpoint setting is wrong).
"""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
import yaml
from isolated_nodes import can_isolate, start_isolated_node

from carsweep.cli import main
from carsweep.storage import location

# Where nothing answers: a port no server binds (the first of the ephemeral-port range is
# below it, so no test server draws it).
WRONG_ENDPOINT = "http://127.0.0.1:9"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_isolate(), reason="mount namespaces need root")]
SWEEP = {
    "num_samples": 2, "resources": {"cpu": 1, "gpu": 0},
    "space": {"optimizer": "adam", "lr": {"loguniform": [1.0e-4, 1.0e-2]}, "epochs": 1,
              "batch_size": 4, "resize": 32, "weights": "none", "num_workers": 0,
              "device": "cpu", "data_cache": "off"},
}


@pytest.fixture(scope="module")
def split_brain(prepared_dataset, bucket_server, tmp_path_factory):
    """(cluster, worker, local storage folder, dataset folder that differs on the worker).
    The head reaches the loopback S3 server; the worker is told an endpoint where nothing
    answers (a node whose endpoint setting is wrong)."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    saved = dict(os.environ)
    os.environ.update(bucket_server.environment())  # the head's processes inherit them
    root = tmp_path_factory.mktemp("split-brain")
    own_storage, dataset = root / "results", root / "data"
    shutil.copytree(prepared_dataset, dataset)
    other = root / "other-preparation"  # the worker's copy: one training image fewer
    shutil.copytree(prepared_dataset, other)
    manifest = pd.read_csv(other / "manifest.csv", keep_default_na=False)
    manifest.iloc[1:].to_csv(other / "manifest.csv", index=False)
    loopback = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=loopback)
    worker = start_isolated_node(cluster.address, [own_storage, dataset],
                                 fill={dataset: other},
                                 environment={"AWS_ENDPOINT_URL": WRONG_ENDPOINT})
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False)
    try:
        yield cluster, worker, own_storage, dataset
    finally:
        ray.shutdown()
        worker.stop()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def check(tmp_path, dataset, storage) -> list[str]:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    return ["sweep", str(path), "--data", str(dataset), "--storage", str(storage), "--check"]


def worker_label(worker) -> str:
    return f"127.0.0.1/{worker.node_id[:8]}"


def test_storage_that_is_a_local_disk_on_one_node_is_refused_naming_it(
        split_brain, prepared_dataset, tmp_path, capsys):
    _cluster, worker, own_storage, _dataset = split_brain
    storage = own_storage / "sweeps"  # does not exist yet on the driver: the check makes it
    assert main(check(tmp_path, prepared_dataset, storage)) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"carsweep sweep --check: node: node {worker_label(worker)}: storage path {storage} is "
        "not shared with the driver: the token the driver wrote there is not visible on this "
        "node (a local disk or another mount at that path?); put the storage on a file system "
        "every node mounts")
    assert list(own_storage.iterdir()) == []  # the exchange and the folder made for it: gone


def test_a_dataset_that_differs_on_one_node_is_refused_naming_it(
        split_brain, tmp_path, capsys):
    _cluster, worker, _own_storage, dataset = split_brain
    storage = tmp_path / "results"
    assert main(check(tmp_path, dataset, storage)) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"carsweep sweep --check: node: node {worker_label(worker)}: "
                           f"dataset {dataset} is not the driver's: its manifest or classes "
                           "differ (digest ")
    assert line.endswith("on the driver); give every node the same prepared dataset at the "
                         "same path")
    assert not storage.exists()


def test_a_bucket_one_node_cannot_reach_is_refused_naming_the_node_and_the_uri(
        split_brain, s3_bucket, prepared_dataset, tmp_path, capsys):
    _cluster, worker, _own_storage, _dataset = split_brain
    storage = f"{s3_bucket}/results"
    assert main(check(tmp_path, prepared_dataset, storage)) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"carsweep sweep --check: node: node {worker_label(worker)}: "
                           f"storage path {storage} is not writable: {storage}/.carsweep-probe-")
    assert f"Failed to connect to {WRONG_ENDPOINT.removeprefix('http://')}" in line
    assert line.endswith("check the bucket, the credentials (AWS_* / GOOGLE_APPLICATION_"
                         "CREDENTIALS, the instance role) and the endpoint (AWS_ENDPOINT_URL)")
    assert location(storage).files() == {}  # the driver's token: removed


def test_shared_storage_and_dataset_pass_on_every_node(split_brain, prepared_dataset,
                                                       tmp_path, capsys):
    storage = tmp_path / "results"
    assert main(check(tmp_path, prepared_dataset, storage)) == 0
    out = capsys.readouterr().out
    assert (f"ok    nodes: storage {storage} shared (a token round trip) and dataset "
            f"{prepared_dataset} the same (manifest digest, every train+val image as "
            "prepared (sha1)) on all 2 node(s)") in out  # its trials decode (data_cache off)
    assert not storage.exists()
