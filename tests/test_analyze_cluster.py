"""carsweep analyze where the GPUs are: the retrains as Ray tasks on a loopback cluster whose head
has no GPU, progress streamed, results equal to a local retrain; failures as one line.

The cluster (`ray.cluster_utils.Cluster`, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 so every process
binds 127.0.0.1) has a head declaring 0 GPUs and one worker declaring a logical GPU: a task that
asks for `gpu: 0.5` can only run on the worker, and computes on the CPU there because the
sweep says `device: cpu` (torch there sees no CUDA, and `auto` would refuse to start). The
sweep is launched from one folder with `weights: ./start.pt` and analyzed from another, so the
start weights are found through the absolute path sweep.yaml recorded.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from no_ray import BLOCK_RAY
from sweep_runs import (
    logical_gpu_cluster,
    output,
    start_cli,
    stop,
    wait_until,
    write_sweep,
)
from test_bad_input import closed_loopback_port, only_line
from trainable_data import one_torch_thread  # noqa: F401 - autouse: local retrains match workers

from carsweep.cli import main
from carsweep.config.sweep import Resources, SweepConfig, save_sweep
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.results import experiment_sweep
from carsweep.trainable import build_model

SEEDS = 2
# Deterministic CPU training, so a seed gives the same model on the worker and here.
# `device: cpu`: the worker's GPU is logical (torch there has no CUDA), so trials and retrains
# train on its CPU on purpose; with `auto` the pre-flight refuses the sweep (test_gpu_preflight).
SPACE = {"model": "resnet18", "weights": "./start.pt", "deterministic": True, "device": "cpu"}
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def gpu_cluster():
    # A ResNet-18 state dict is 45 MB: the start weights and each retrain's result pass
    # through the object stores, so they get room for several at once. The worker's 2 CPUs
    # and 2 GPUs run both retrains at once, a whole GPU each.
    with logical_gpu_cluster(worker_gpus=2, object_store_memory=300 * 1024**2) as (cluster, _):
        yield cluster


@pytest.fixture(scope="module")
def swept(gpu_cluster, prepared_dataset, tmp_path_factory) -> Path:
    """A 1-trial sweep with a GPU per trial, joined by address from folder `launch/`."""
    launch = tmp_path_factory.mktemp("launch")
    torch.manual_seed(1)
    torch.save(build_model(4).state_dict(), launch / "start.pt")
    write_sweep(launch, "gpu", num_samples=1, resources={"cpu": 1, "gpu": 1}, space=SPACE)
    warned = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(warned):
        patch.chdir(launch)
        assert main(["sweep", "gpu.yaml", "--data", str(prepared_dataset), "--storage",
                     "results", "--address", gpu_cluster.address]) == 0
    # Trials train on the CPU on purpose: the pre-flight says the GPUs go unused, and goes on.
    # (Ray streams the trials' own log lines to a driver that joined by address: not ours.)
    assert [line for line in warned.getvalue().splitlines() if "warning" in line] == [
        "warning: gpu: device is cpu, so the 1 GPU each trial reserves goes unused; set "
        "device: auto to train on the GPUs"]
    return launch / "results" / "gpu"


@pytest.fixture(scope="module")
def analyzed(swept, tmp_path_factory) -> tuple[Path, str]:
    """`carsweep analyze --seeds 2` run from another folder: (analysis folder, its stdout)."""
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(tmp_path_factory.mktemp("elsewhere"))
        assert main(["analyze", str(swept), "--seeds", str(SEEDS)]) == 0
    return swept / "analysis", printed.getvalue()


def worker_of(cluster):
    (worker,) = cluster.worker_nodes
    return worker


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_the_sweep_recorded_the_start_weights_by_absolute_path(swept):
    sweep = experiment_sweep(swept)
    assert sweep.space["weights"].values == [str(swept.parent.parent / "start.pt")]
    assert sweep.cluster.address is not None  # what makes analyze go to the cluster


@pytest.mark.slow
def test_both_retrains_ran_on_the_gpu_worker(analyzed, gpu_cluster):
    folder, _ = analyzed
    worker = worker_of(gpu_cluster)
    seeds = metrics_of(folder)["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1]
    for seed in seeds:
        assert seed["ran_on"] == "cluster"
        assert seed["gpus"] == 1.0  # a whole GPU each, both at once on the worker's two
        assert seed["node_id"] == worker.node_id != gpu_cluster.head_node.node_id
        assert seed["node"] == f"127.0.0.1/{worker.node_id[:8]}"
        assert seed["hostname"] == HOST
    where = f"on node 127.0.0.1/{worker.node_id[:8]} ({HOST})"
    assert (f"Retrained as Ray tasks on the cluster: seed 0 {where}, seed 1 {where}."
            in (folder / "report.html").read_text())


@pytest.mark.slow
def test_each_retrains_progress_lines_came_through_in_order(analyzed, gpu_cluster):
    folder, out = analyzed
    lines = out.splitlines()
    where = f"on node 127.0.0.1/{worker_of(gpu_cluster).node_id[:8]} ({HOST})"
    for k in range(SEEDS):
        name = f"[analyze] retrain {k + 1}/{SEEDS} (seed {k}) {where}"
        mine = [line.removeprefix(name) for line in lines if line.startswith(name)]
        assert [line.split("  ")[0] for line in mine] == [
            ": started", " epoch 1/2", " epoch 2/2", " predicting 32 test images"], out
    # Every retrain's lines came before the driver went on to the pictures.
    last_progress = max(i for i, line in enumerate(lines) if " predicting " in line)
    assert last_progress < lines.index("[analyze] drawing confusion matrices")
    assert f"analysis written: {folder}" in lines


@pytest.mark.slow
def test_cluster_retrains_equal_local_ones_of_the_same_seeds(analyzed, tmp_path, monkeypatch):
    folder, _ = analyzed
    copy = tmp_path / "copy"
    shutil.copytree(folder.parent, copy)
    monkeypatch.chdir(tmp_path)  # neither where the sweep was launched nor the experiment
    assert main(["analyze", str(copy), "--seeds", str(SEEDS), "--local"]) == 0
    cluster, local = metrics_of(folder), metrics_of(copy / "analysis")
    assert [s["ran_on"] for s in local["seeds"]] == ["local"] * SEEDS
    assert [s["node"] for s in local["seeds"]] == [None] * SEEDS
    assert (f"Retrained on host {HOST} (in the analyze process)."
            in (copy / "analysis" / "report.html").read_text())
    for key in ("top1", "top5", "mean_per_class_accuracy"):
        assert [s[key] for s in local["seeds"]] == [s[key] for s in cluster["seeds"]]
    on_cluster = pd.read_csv(folder / "predictions.csv")
    here = pd.read_csv(copy / "analysis" / "predictions.csv")
    pd.testing.assert_frame_equal(here, on_cluster)  # every probability of seed 0
    # The exported model is the one rebuilt from the weights the task sent back.
    sent = torch.load(folder / "model" / "checkpoint.pt", weights_only=True)["model"]
    kept = torch.load(copy / "analysis" / "model" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(sent[name], kept[name]) for name in kept)


@pytest.mark.slow
def test_a_retrain_that_fails_on_the_node_is_one_line_and_keeps_the_analysis(
        analyzed, gpu_cluster, capsys):
    folder, _ = analyzed
    before = (folder / "metrics.json").read_text()
    weights = folder.parent.parent.parent / "start.pt"  # the sweep's start weights
    good = weights.read_bytes()
    state = build_model(4).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")  # NaN loss at the first batch
    torch.save(state, weights)
    try:
        assert main(["analyze", str(folder.parent), "--seeds", str(SEEDS)]) == 2
    finally:
        weights.write_bytes(good)
    where = f"on node 127.0.0.1/{worker_of(gpu_cluster).node_id[:8]} \\({re.escape(HOST)}\\)"
    assert re.fullmatch(
        rf"carsweep analyze: error: retrain [12]/2 \(seed [01]\) {where} failed: training loss "
        r"became nan by batch 1 of the epoch \(lr [0-9.e-]+\); the run stopped: .*",
        only_line(capsys.readouterr().err))
    assert (folder / "metrics.json").read_text() == before
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".analysis")] == []


@pytest.mark.slow
def test_a_cluster_that_is_gone_is_one_line_offering_local(swept, tmp_path, capsys):
    copy = shutil.copytree(swept, tmp_path / "copy", ignore=shutil.ignore_patterns("analysis"))
    kept = sorted(p.name for p in copy.iterdir())
    address = f"127.0.0.1:{closed_loopback_port()}"
    assert main(["analyze", str(copy), "--address", address]) == 2
    assert only_line(capsys.readouterr().err) == (
        f"carsweep analyze: error: cannot join the Ray cluster at {address}: nothing answers "
        "there (Connection refused); start one with `ray start --head` or give the head node's "
        "HOST:PORT; or retrain on this machine with --local")
    assert sorted(p.name for p in copy.iterdir()) == kept  # no analysis, no temporary folder


def test_local_and_address_together_are_refused(tmp_path, capsys):
    assert main(["analyze", str(tmp_path), "--local", "--address", "auto"]) == 2
    assert only_line(capsys.readouterr().err) == (
        "carsweep analyze: error: --local and --address auto contradict each other: --local "
        "retrains in this process, --address on a cluster; give one of them")
    assert list(tmp_path.iterdir()) == []


NO_RAY_ANALYZE = BLOCK_RAY + """
import carsweep.analysis.analyze, carsweep.analysis.report
from carsweep.cli import build_parser
from carsweep.cli.analyze import retrain_strategy

for flags in (["--local"], []):
    args = build_parser().parse_args(["analyze", sys.argv[1], *flags])
    print(flags, retrain_strategy(args).__name__)
"""


def test_analysis_and_a_local_analyze_need_no_ray(tmp_path):
    save_sweep(SweepConfig(name="here"), tmp_path / "sweep.yaml")  # a sweep on a local Ray
    done = subprocess.run([sys.executable, "-c", NO_RAY_ANALYZE, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "['--local'] retrain_locally\n[] retrain_locally\n"


def test_a_sweep_on_a_cluster_is_analyzed_there_unless_local(tmp_path):
    from carsweep.cli import build_parser
    from carsweep.cli.analyze import retrain_strategy
    from carsweep.search.cluster_retrain import ClusterRetrain

    save_sweep(SweepConfig(cluster={"address": "10.0.0.1:6379"}), tmp_path / "sweep.yaml")

    def strategy(*flags):
        return retrain_strategy(build_parser().parse_args(["analyze", str(tmp_path), *flags]))

    assert isinstance(strategy(), ClusterRetrain)
    assert strategy().address == "10.0.0.1:6379"
    assert strategy("--address", "auto").address == "auto"
    assert strategy("--local").__name__ == "retrain_locally"


def test_a_task_gets_the_device_a_trial_would():
    from carsweep.search.cluster_retrain import task_config
    from carsweep.trainable import resolve_device

    auto = TrialConfig(device="auto")
    # resolved on the node with the task's GPU share, as a trial's (test_device.py)
    assert resolve_device(task_config(auto, Resources(cpu=1, gpu=0)).device, 0).type == "cpu"
    assert task_config(auto, Resources(cpu=1, gpu=0.5)).device == "auto"  # cuda on a GPU node
    assert task_config(TrialConfig(device="cuda"), Resources(gpu=1)).device == "cuda"
    with pytest.raises(UserError, match=r"`device` is 'cuda', but a retrain task gets no GPU "
                                        r"\(the sweep's `resources.gpu` is 0\)"):
        task_config(TrialConfig(device="cuda"), Resources(cpu=1, gpu=0))


def test_launch_makes_weights_paths_absolute(tmp_path, monkeypatch):
    from carsweep.search.sweep_inputs import resolved

    monkeypatch.chdir(tmp_path)
    config = SweepConfig(
        space={"weights": {"choice": ["imagenet", "./a.pt", "none", "~/b.pt"]},
               "optimizer": {"choice": ["sgd", "adam"]}},
        searcher={"points_to_evaluate": [{"weights": "./a.pt"}, {"optimizer": "adam"}]})
    got = resolved(config)
    assert got.space["weights"].values == [
        "imagenet", str(tmp_path / "a.pt"), "none", str(Path("~/b.pt").expanduser())]
    assert got.searcher.points_to_evaluate == [{"weights": str(tmp_path / "a.pt")},
                                               {"optimizer": "adam"}]
    assert got.space["optimizer"] == config.space["optimizer"]
    fixed = resolved(SweepConfig(space={"weights": "start.pt"})).space["weights"]
    assert (fixed.kind, fixed.values) == ("fixed", [str(tmp_path / "start.pt")])
    assert resolved(got) == got  # a resumed sweep resolves to the same


class TouchedCuda(Exception):
    """Raised where the analyze process (the driver) would start CUDA."""


@pytest.mark.slow
def test_analyze_cuda_on_a_driver_without_gpus_leaves_cuda_to_the_workers(
        analyzed, gpu_cluster, monkeypatch, capsys):
    folder, _ = analyzed
    before = (folder / "metrics.json").read_text()

    def touched():
        raise TouchedCuda("the analyze process started CUDA")

    monkeypatch.setattr(torch.cuda, "init", touched)
    monkeypatch.setattr(torch.cuda, "_lazy_init", touched)
    assert main(["analyze", str(folder.parent), "--device", "cuda"]) == 2
    # The temperature was fitted here on the CPU; the retrain asked the worker's GPU, which
    # its torch cannot use: that is the failure, named on the worker.
    worker = f"127.0.0.1/{worker_of(gpu_cluster).node_id[:8]}"
    assert re.fullmatch(
        rf"carsweep analyze: error: retrain 1/1 \(seed 0\) on node {re.escape(worker)} "
        rf"\({re.escape(HOST)}\) failed: Ray gave this run 1 GPU, but torch \S+ on \S+ cannot "
        r"use CUDA: Found no NVIDIA driver on your system; .*", only_line(capsys.readouterr().err))
    assert (folder / "metrics.json").read_text() == before


def test_retrain_gpus_are_checked_and_only_for_a_cluster(tmp_path, capsys):
    from carsweep.search.cluster_retrain import retrain_resources

    gpu_sweep = SweepConfig(resources={"cpu": 2, "gpu": 0.25})
    assert retrain_resources(gpu_sweep) == Resources(cpu=2, gpu=1.0)  # a whole GPU
    assert retrain_resources(gpu_sweep, 0.5) == Resources(cpu=2, gpu=0.5)
    assert retrain_resources(SweepConfig(resources={"cpu": 1, "gpu": 0})).gpu == 0
    with pytest.raises(UserError, match=r"--retrain-gpus 1.5: .*whole number"):
        retrain_resources(gpu_sweep, 1.5)
    assert main(["analyze", str(tmp_path), "--local", "--retrain-gpus", "0.5"]) == 2
    assert only_line(capsys.readouterr().err) == (
        "carsweep analyze: error: --retrain-gpus 0.5 is for retrains on a cluster; --local "
        "retrains in this process")


# Last but one: it takes the GPU worker away from the module's cluster.
@pytest.mark.slow
def test_a_lost_node_is_one_line_naming_it_and_keeps_the_analysis(analyzed, gpu_cluster,
                                                                  tmp_path):
    folder, _ = analyzed
    before = (folder / "metrics.json").read_text()
    worker = worker_of(gpu_cluster)
    process = start_cli([sys.executable, "-m", "carsweep", "analyze", str(folder.parent),
                         "--epochs", "50"], tmp_path / "logs")
    try:
        wait_until(lambda: "epoch 1/50" in output(process)[0], "the retrain's first epoch",
                   180, process)
        gpu_cluster.remove_node(worker)
        process.wait(timeout=120)
    finally:
        stop(process)
    out, err = output(process)
    assert process.returncode == 2, err[-3000:]
    assert only_line(err) == (
        f"carsweep analyze: error: retrain 1/1 (seed 0) on node 127.0.0.1/{worker.node_id[:8]} "
        f"({HOST}) failed: NodeDiedError: Task failed because the node it was running on is "
        "dead or unavailable")
    assert "epoch 50/50" not in out
    assert (folder / "metrics.json").read_text() == before


@pytest.mark.slow  # after the lost node: the cluster has no GPU left
def test_a_cluster_without_gpus_left_is_one_line_offering_local(analyzed, gpu_cluster, capsys):
    folder, _ = analyzed
    assert not gpu_cluster.worker_nodes
    before = (folder / "metrics.json").read_text()
    assert main(["analyze", str(folder.parent)]) == 2
    assert only_line(capsys.readouterr().err) == (
        "carsweep analyze: error: a retrain task (--retrain-gpus) asks 1 GPU, but the Ray "
        "cluster has no GPUs; add GPU nodes; or retrain on this machine with --local")
    assert (folder / "metrics.json").read_text() == before
