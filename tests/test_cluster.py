"""A sweep on a real 3-node Ray cluster on loopback, joined with --address; then a node dies.

`ray.cluster_utils.Cluster` starts a head and two workers as separate raylets on 127.0.0.1
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray starts), one CPU each, so a trial asking for
one CPU fits on any node and three trials at once must use all three. Ray's node_ip is the
same for every node here; the trials report their node_id, which is not.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
from sweep_runs import (
    epochs_by_trial,
    output,
    result_rows,
    start_cli,
    stop,
    sweep_command,
    wait_until,
    write_sweep,
)

pytestmark = pytest.mark.slow
NODES = 3


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process binds 127.0.0.1
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": 1, "object_store_memory": 80 * 1024**2, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    for _ in range(NODES - 1):
        cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    assert cluster.address.startswith("127.0.0.1:")
    yield cluster
    cluster.shutdown()


def node_ids(cluster) -> dict[str, str]:
    """node_id -> "head" / "worker" for the nodes alive now."""
    ids = {cluster.head_node.node_id: "head"}
    ids.update({node.node_id: "worker" for node in cluster.worker_nodes})
    return ids


def test_a_sweep_by_address_spreads_over_the_nodes_and_a_lost_nodes_trial_resumes_elsewhere(
        cluster, prepared_dataset, tmp_path):
    epochs = 4
    nodes_at_launch = set(node_ids(cluster))
    config = write_sweep(tmp_path, "lossy", num_samples=3, max_failures=2,
                         space={"epochs": epochs})
    storage = tmp_path / "results"
    experiment = storage / "lossy"
    workers = {node.node_id: node for node in cluster.worker_nodes}
    process = start_cli(sweep_command(config, prepared_dataset, storage,
                                      "--address", cluster.address), tmp_path / "logs",
                        live_results=True)
    try:
        # A trial on a worker that has a checkpoint (an epoch reported) and epochs left.
        def trial_mid_run_on_a_worker():
            for trial, rows in result_rows(experiment).items():
                if rows and rows[-1]["node_id"] in workers and rows[-1]["epoch"] < epochs:
                    return trial, rows[-1]["node_id"], rows[-1]["epoch"]
            return None

        victim, lost_node, epoch_at_loss = wait_until(
            trial_mid_run_on_a_worker, "a trial with a checkpoint on a worker", 240, process)
        cluster.remove_node(workers[lost_node])
        process.wait(timeout=300)
    finally:
        stop(process)
    assert process.returncode == 0, output(process)[1][-3000:]

    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == 3
    assert table["trial_id"].is_unique
    nodes_used = {row["node_id"] for rows in result_rows(experiment).values() for row in rows}
    assert nodes_used <= nodes_at_launch  # ran on this cluster, not a Ray of its own
    assert len(nodes_used) >= 2
    assert cluster.head_node.remaining_processes_alive()  # joined the cluster, did not own it
    assert sorted(table["state"]) == ["COMPLETE"] * 3
    assert list(table["epochs_run"]) == [epochs] * 3
    retried = table.set_index("trial_dir").loc[victim]
    assert retried["failures"] == 1

    seen = epochs_by_trial(experiment)
    assert sorted(seen) == sorted(table["trial_dir"])
    # The retried trial continued after its checkpoint: epoch 1 trained once, no epoch lost.
    assert seen[victim][0] == 1
    assert seen[victim].count(1) == 1
    assert sorted(set(seen[victim])) == list(range(1, epochs + 1))
    assert seen[victim][-1] == epochs
    # The trial may report another epoch between our look and the node's removal, so the
    # boundary is where the lost node's rows end: all of them first, none after, and the
    # rest (the epochs after the loss) from the surviving nodes.
    rows = result_rows(experiment)[victim]
    on_lost_node = [i for i, row in enumerate(rows) if row["node_id"] == lost_node]
    assert on_lost_node == list(range(len(on_lost_node)))
    assert rows[on_lost_node[-1]]["epoch"] >= epoch_at_loss
    after_loss = rows[len(on_lost_node):]
    assert after_loss
    assert all(row["node_id"] != lost_node for row in after_loss)
    assert lost_node not in node_ids(cluster)
    # The other trials ran straight through: each epoch once.
    for trial, trial_epochs in seen.items():
        if trial != victim:
            assert trial_epochs == list(range(1, epochs + 1))


def test_gpu_trials_on_a_cpu_only_cluster_are_one_line(cluster, prepared_dataset, tmp_path,
                                                       capsys):
    from carsweep.cli import main

    config = write_sweep(tmp_path, "gpu", resources={"cpu": 1, "gpu": 1})
    storage = tmp_path / "results"
    code = main(["sweep", str(config), "--data", str(prepared_dataset), "--storage", str(storage),
                 "--address", cluster.address])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("carsweep sweep: error: pre-flight resources: `resources.gpu` is 1.0, but the "
                   "Ray cluster has no GPUs; set resources.gpu=0 or add GPU nodes\n")
    assert not storage.exists()
    assert cluster.head_node.remaining_processes_alive()  # the cluster is left running
