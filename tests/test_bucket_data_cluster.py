"""A dataset in a bucket, end to end, on a 2-node loopback cluster whose worker shares nothing
with the head but the bucket (tests/isolated_nodes.py: its own tmpfs over this test's folder,
which holds the staged source, the cache folder and the config, and over Ray's temporary
folder). The source is uploaded, prepared from the bucket into the bucket, and swept with
`--data s3://...`: the worker mirrors train+val into its own cache folder before trials start
(an object with other bytes stops that, one line naming the node and the object, before
launch; put back, the mirror resumes) and builds its decoded cache from the mirror, every
trial trains there, and analyze retrains there after mirroring the test split too. The
head's mirror holds only what the driver read."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from isolated_nodes import can_isolate, start_isolated_node
from sweep_runs import run_cli, sweep_command, write_sweep

from carsweep.cli import main
from carsweep.data.manifest import load_dataset
from carsweep.data.mirror import VERIFIED_FILE
from carsweep.results import load_experiment
from carsweep.results.export import load_export
from carsweep.search.preflight.dry_step import DRY_BATCH
from carsweep.storage import location

TRAIN_VAL, TEST = 96, 32  # the shared synthetic dataset at val fraction 0.25

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not can_isolate(), reason="mount namespaces need root")]


@pytest.fixture
def cluster_sharing_only_the_bucket(s3_bucket, tmp_path, monkeypatch):
    """(cluster, worker node's label): a head with no CPU and a worker with 2 in a mount
    namespace of its own; the head's state and cache folders are in this test's folder, which
    the worker sees as its own empty tmpfs (its caches and mirror go there)."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CARSWEEP_CACHE_DIR", str(tmp_path / "caches"))
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "object_store_memory": 80 * 1024**2})
    worker = start_isolated_node(cluster.address, [tmp_path, Path("/tmp/ray")], num_cpus=2)
    try:
        yield cluster, f"127.0.0.1/{worker.node_id[:8]}"
    finally:
        worker.stop()
        cluster.shutdown()


def test_a_sweep_of_a_dataset_in_a_bucket_mirrors_it_on_the_worker_and_analyzes_there(
        cluster_sharing_only_the_bucket, s3_bucket, synthetic_source, tmp_path):
    cluster, worker = cluster_sharing_only_the_bucket
    source, data = f"{s3_bucket}/source", f"{s3_bucket}/data"
    location(source).upload_tree(synthetic_source)
    assert main(["prepare", source, "--out", data, "--val-fraction", "0.25"]) == 0
    dataset = load_dataset(data)
    assert len(dataset.rows("train", "val")) == TRAIN_VAL
    # data_cache auto (the default): the worker's cache is built from its mirror, and the
    # decoding path (the retrain's test split, the temperature's val) reads mirrors too
    config = write_sweep(tmp_path, "mirrored", {"data_cache": "auto"}, max_concurrent_trials=2)
    sweep = sweep_command(config, data, f"{s3_bucket}/results", "--address", cluster.address)

    # An image with other bytes than prepare hashed (the dry step reads the first ones): the
    # worker's mirror refuses it before any trial, in one line, and nothing is written.
    changed = location(source) / dataset.rows("val")["path"].iloc[-1]
    original = changed.read_bytes()
    changed.write_bytes((synthetic_source / dataset.rows("train")["path"][0]).read_bytes())
    refused = run_cli(sweep, 300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"carsweep sweep: error: mirror on node {worker}: "
                                     f"{changed}: its bytes have sha1 "), refused.stderr
    assert not location(f"{s3_bucket}/results").files()

    changed.write_bytes(original)
    done = run_cli(sweep, 300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"mirror on node {worker}: mirroring {TRAIN_VAL} of {TRAIN_VAL} images from "
            f"{source} into ") in done.stdout, done.stdout[-3000:]
    fetched = re.search(rf"mirror on node {re.escape(worker)}: fetched (\d+), kept (\d+): "
                        rf"{TRAIN_VAL} images in ", done.stdout)
    assert fetched, done.stdout[-3000:]
    assert int(fetched[2]) > 0  # the refused mirror's good files were kept, not fetched again
    assert int(fetched[1]) + int(fetched[2]) == TRAIN_VAL
    built = done.stdout.index(f"cache 32px on node {worker}: built, {TRAIN_VAL} images")
    assert built > done.stdout.index(fetched[0])  # from the mirror, once it was whole
    table = load_experiment(f"{s3_bucket}/results/mirrored").trials
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"]
    assert list(table["epochs_run"]) == [2, 2]
    # The head's mirror: the dry step's images only; the worker's was its own disk.
    head_mirror = tmp_path / "caches/images/s3" / location(source).fs_path
    assert len(head_images(head_mirror)) == 3 * DRY_BATCH

    analyzed = run_cli([sys.executable, "-m", "carsweep", "analyze",
                        f"{s3_bucket}/results/mirrored", "--epochs", "1", "--device", "cpu"],
                       300)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert re.search(rf"on node {re.escape(worker)} \(.*\) mirror: mirroring {TEST} of "
                     rf"{TRAIN_VAL + TEST} images from {source}", analyzed.stdout), (
        analyzed.stdout[-3000:])
    # and val (the temperature) and test (the gallery, with a training example of each class
    # it shows): no more of train than the dry step's and those
    held = {p.relative_to(head_mirror).as_posix() for p in head_images(head_mirror)}
    assert set(dataset.rows("val", "test")["path"]) <= held
    assert len(held & set(dataset.rows("train")["path"])) <= 2 * DRY_BATCH + dataset.num_classes
    exported = run_cli([sys.executable, "-m", "carsweep", "export",
                        f"{s3_bucket}/results/mirrored", "--out", str(tmp_path / "best.pt")],
                       300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert load_export(tmp_path / "best.pt").source["kind"] == "retrained"  # analyze's model


def head_images(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name != VERIFIED_FILE]
