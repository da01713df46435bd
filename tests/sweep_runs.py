"""Helpers for the reliability tests: tiny sweep configs, the CLI in a subprocess, what a sweep
left on disk (each trial's epochs and nodes, read from Ray's result.json), and its trials'
processes (exited or not, watched while the sweep runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

METRIC = "val_top1"
# Where ResNet-18 is not the point (crashes, resumes, lost nodes, processes), a small model:
# its checkpoint is 18 MB where ResNet-18's is 135 MB (weights and Adam's moments), and these
# sweeps write one every epoch; the tests that read a model's results name ResNet-18.
TINY_SPACE = {
    "model": "mobilenet_v3_small",
    "optimizer": "adam",
    "lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "epochs": 2,
    "batch_size": 16,
    "resize": 32,
    "augmentation": "flip",
    "weights": "none",
    "num_workers": 0,
    "device": "cpu",
    "data_cache": "off",
}
TINY_SWEEP = {
    "num_samples": 2,
    "resources": {"cpu": 1, "gpu": 0},
    "scheduler": "fifo",  # every trial runs all its epochs: what was kept is predictable
    "max_failures": 2,
    "checkpoint_every_min": 0,  # every epoch: these tests count the epochs a restart redoes
    "searcher": {"seed": 0, "n_startup_trials": 2},
    "space": TINY_SPACE,
}
# The one finished sweep the suite reads (starting Ray and a trial process is most of a
# sweep's time here, so the tests share it): optimizer, lr and the augmentation searched (the
# analysis then has CAM-guided occlusion to report, or not), ASHA on. It minimises val_loss:
# after an epoch or two every trial's val_top1 over these 24 val images is often chance (0.25)
# exactly, depending on the CPU's float arithmetic, and ASHA never stops a tie; the losses
# differ by orders of magnitude (an Adam run at lr 0.05 from scratch), so ASHA stops one on any
# host, and the suite reads a sweep of mode min where the tiny sweeps are mode max.
FINISHED_SWEEP = {
    "name": "finished", "metric": "val_loss", "mode": "min",
    "num_samples": 4, "max_concurrent_trials": 2,
    "resources": {"cpu": 1, "gpu": 0}, "cluster": {"num_cpus": 2},
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "searcher": {"seed": 0, "n_startup_trials": 4},
    "space": {**TINY_SPACE, "model": "resnet18", "optimizer": {"choice": ["sgd", "adam"]},
              "lr": {"loguniform": [1.0e-3, 0.1]},
              "augmentation": {"choice": ["flip", "flip+cam-occlusion"]}, "epochs": 3},
}
ANALYZE = {"epochs": 2, "seeds": 2}


# Ray started by a CLI subprocess binds loopback only and reports no usage.
def cli_env() -> dict[str, str]:
    """This process's environment as it is now (Ray's auth token included), for a CLI child."""
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def write_sweep(folder: Path, name: str, space: dict | None = None, **changes) -> Path:
    """A sweep YAML: TINY_SWEEP with `changes` on top and `space` merged into its space."""
    config = {**TINY_SWEEP, **changes, "space": {**TINY_SPACE, **(space or {})}}
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sweep_command(config: Path, data: Path, storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "carsweep", "sweep", str(config), "--data", str(data),
            "--storage", str(storage), *extra]


def run_cli(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=cli_env())


def start_cli(command: list[str], logs: Path, *, live_results: bool = False) -> subprocess.Popen:
    """The CLI in the background, its output in files (a full pipe would block it).

    Tune's driver writes result.json in a staging folder and copies it into the experiment
    with its experiment state: every 10 s, or after a trial's second checkpoint since the last
    copy (every 30 s for a bucket: BUCKET_SNAPSHOT_PERIOD_S). A test that acts at a given
    epoch of a running sweep needs `live_results`: Tune then snapshots at every step of its
    loop (TUNE_GLOBAL_CHECKPOINT_S=0), so the folder is current, where otherwise a trial it
    shows one epoch in may be done.
    """
    logs.mkdir(parents=True, exist_ok=True)
    env = cli_env() | ({"TUNE_GLOBAL_CHECKPOINT_S": "0"} if live_results else {})
    with (logs / "stdout.txt").open("w") as out, (logs / "stderr.txt").open("w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
    process.logs = logs
    return process


def output(process: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a process started by start_cli, so far."""
    return ((process.logs / "stdout.txt").read_text(), (process.logs / "stderr.txt").read_text())


def result_rows(experiment: Path) -> dict[str, list[dict]]:
    """Every row each trial reported, by trial folder name, in the order written. A line not
    yet ended by its newline is left out: Tune may be copying the file into the experiment
    right now (a test polling a running sweep once read half a row)."""
    rows = {}
    for result in sorted(Path(experiment).glob("trial_*/result.json")):
        lines = result.read_text().split("\n")[:-1]
        rows[result.parent.name] = [json.loads(line) for line in lines if line.strip()]
    return rows


def epochs_by_trial(experiment: Path) -> dict[str, list[int]]:
    """The epoch of every row each trial reported: a trial trained twice shows [1, 2, 1, 2]."""
    return {trial: [int(row["epoch"]) for row in rows]
            for trial, rows in result_rows(experiment).items()}


def wait_until(condition: Callable[[], object], what: str, timeout: float,
               process: subprocess.Popen | None = None, every: float = 0.5) -> object:
    """Poll `condition` every `every` seconds until it returns something truthy; fail if
    `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep exited ({process.returncode}) before {what}: "
                                 f"{output(process)[1][-3000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop(process: subprocess.Popen) -> None:
    """Kill the sweep subprocess if a failed test left it running."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def linked_copy(experiment: Path, target: Path) -> Path:
    """`target` holding a symlink to each entry of `experiment`: what analyze writes (its
    analysis/ folder) lands in the copy only."""
    target.mkdir(parents=True)
    for path in experiment.iterdir():
        (target / path.name).symlink_to(path, target_is_directory=path.is_dir())
    return target


def process_exited(pid: int) -> bool:
    """True when `pid` is gone or a zombie (exited, only its exit status left to collect)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no such process (or it vanished while read)
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def first_rows(experiment: Path) -> dict[str, dict]:
    """The first complete result row of every trial that has reported, by trial folder."""
    rows = {}
    for result in experiment.glob("trial_*/result.json"):
        line = result.read_text().split("\n", 1)[0]
        try:
            rows[result.parent.name] = json.loads(line)
        except json.JSONDecodeError:  # being written: the next look reads it whole
            continue
    return rows


class FirstReportWatcher(threading.Thread):
    """Polls the experiment folder; when a trial's first result appears, notes which pids of
    the trials that reported before it were still running at that moment."""

    def __init__(self, experiment: Path) -> None:
        super().__init__(daemon=True)
        self.experiment = experiment
        self.order: list[tuple[str, int]] = []  # (trial, pid) in first-report order
        self.alive_at_report: dict[str, list[int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for trial, row in first_rows(self.experiment).items():
                if trial not in self.alive_at_report:
                    earlier = [pid for _, pid in self.order]
                    self.alive_at_report[trial] = [p for p in earlier if not process_exited(p)]
                    self.order.append((trial, row["pid"]))
            time.sleep(0.02)


@contextmanager
def logical_gpu_cluster(worker_gpus: int, object_store_memory: int) -> Iterator[tuple]:
    """(cluster, its worker): a loopback Ray cluster whose head has 1 CPU and no GPU, and one
    worker with 2 CPUs offering `worker_gpus` logical GPUs that torch there cannot use (this
    machine has no NVIDIA driver): a GPU node whose driver is broken."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    common = {"object_store_memory": object_store_memory, "include_dashboard": False}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**common, "num_cpus": 1, "num_gpus": 0})
    try:
        worker = cluster.add_node(**common, num_cpus=2, num_gpus=worker_gpus)
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        cluster.shutdown()
