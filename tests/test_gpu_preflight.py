"""The pre-flight on a cluster of logical GPUs: a GPU node whose torch cannot use CUDA stops the
sweep before launch (one line naming the node and CUDA, nothing written, no trial), and
`--check` states the trial slots by CPU and by GPU and what the concurrency leaves TPE.

A loopback cluster (`ray.cluster_utils.Cluster`): a head with 1 CPU and no GPU, a worker with
2 CPUs offering 2 GPUs that torch there cannot use (this machine has no NVIDIA driver), exactly
a GPU node whose driver is broken.
"""

from __future__ import annotations

import re

import pytest
from sweep_runs import logical_gpu_cluster, write_sweep
from test_bad_input import only_line

from carsweep.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logical_gpus():
    with logical_gpu_cluster(worker_gpus=2, object_store_memory=100 * 1024**2) as (cluster,
                                                                                   worker):
        yield cluster, f"127.0.0.1/{worker.node_id[:8]}"


def sweep_args(folder, dataset, cluster, *extra) -> list[str]:
    return ["sweep", str(folder / "gpu.yaml"), "--data", str(dataset), "--storage",
            str(folder / "results"), "--address", cluster.address, *extra]


def test_a_gpu_node_whose_torch_cannot_use_cuda_stops_the_sweep_before_launch(
        logical_gpus, prepared_dataset, tmp_path, capsys):
    cluster, worker = logical_gpus
    write_sweep(tmp_path, "gpu", space={"device": "auto"}, resources={"cpu": 1, "gpu": 0.5})
    assert main(sweep_args(tmp_path, prepared_dataset, cluster)) == 2
    assert re.fullmatch(
        rf"carsweep sweep: error: pre-flight gpu: node {re.escape(worker)}: Ray offers GPUs "
        r"there, but torch \S+ cannot use CUDA: Found no NVIDIA driver on your system; trials "
        r"would train on the CPU \(check its NVIDIA driver, or set device: cpu on purpose\)",
        only_line(capsys.readouterr().err))
    assert not (tmp_path / "results").exists()  # no experiment, so no trial ever trained


def test_check_states_slots_by_cpu_and_gpu_and_what_tpe_learns(
        logical_gpus, prepared_dataset, tmp_path, capsys):
    cluster, worker = logical_gpus
    write_sweep(tmp_path, "gpu", resources={"cpu": 1, "gpu": 0.5}, num_samples=8,
                searcher={"seed": 0, "n_startup_trials": 2})  # device: cpu (TINY_SPACE)
    assert main(sweep_args(tmp_path, prepared_dataset, cluster, "--check")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if re.match(r"  \S+ +(slots|concurrency|gpu):", line)] == [
        f"  warn  slots: node {worker} (2 GPU, 2 CPU): 2 trials at once (4 by GPU, 2 per GPU, "
        "2 by CPU (1 each)), so 1 of 2 GPUs sit idle; resources {cpu: 1, gpu: 1} fill them",
        "  ok    concurrency: 2 trials at once (2 slots on the cluster): 5 of 8 suggestions "
        "see results (the first 2 start before any result, and TPE draws at random until 2 "
        "have ended)",
        "  warn  gpu: device is cpu, so the 0.5 GPU each trial reserves goes unused; set "
        "device: auto to train on the GPUs",
    ]
    # The real step of the space's worst trial ran on the worker, in the bucket of GPUs Ray
    # cannot name, on its CPU as `device: cpu` says.
    (step,) = [line for line in lines if "real step" in line]
    assert re.fullmatch(
        rf"  ok    real step: unknown GPU on node {re.escape(worker)}: mobilenet_v3_small at "
        r"batch_size=16 x resize=32, flip, adam, fp32: trained and evaluated on cpu in "
        r"[\d.]+ s", step)
    assert lines[-1] == "pre-flight: all checks passed (2 warning(s) above)"
