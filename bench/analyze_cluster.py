"""analyze's retrains on a cluster: the trial's GPU share per retrain task (what analyze asked
before) against a whole GPU each (now), side by side in one run.

A loopback Ray cluster (`ray.cluster_utils.Cluster`): a head with 1 CPU and no GPU, and
`--workers` nodes of 4 CPUs and 1 logical GPU each. A 2-trial sweep at `{cpu: 1, gpu: 0.25}`
(`device: cpu`: the GPUs are logical), then `analyze --seeds 2 --ensemble 2` (3 retrains) twice
on copies of it: with `--retrain-gpus 0.25` and with the default (1). Prints each analyze's wall
time and how many retrains each node ran, as Markdown for BENCHMARKS.md.

On loopback every node shares this machine's cores, so the wall time shows the scheduling
(3 retrains at once packed onto one GPU, against 2 at once on the 2 GPUs and the third
after), not what the GPUs would deliver: on real GPUs the packed retrains time-slice one GPU.

    .venv/bin/python bench/analyze_cluster.py [--workers 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import describe, load_average

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from trainable_data import make_tiny_dataset  # noqa: E402

SPACE = {"model": "resnet18", "optimizer": "adam", "lr": {"loguniform": [3.0e-4, 3.0e-3]},
         "epochs": 2, "batch_size": 16, "resize": 32, "augmentation": "flip",
         "weights": "none", "num_workers": 0, "device": "cpu", "data_cache": "off"}


def sweep_yaml(folder: Path) -> Path:
    config = {"name": "retrains", "num_samples": 2, "resources": {"cpu": 1, "gpu": 0.25},
              "scheduler": "fifo", "searcher": {"seed": 0, "n_startup_trials": 2},
              "space": SPACE}
    path = folder / "retrains.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class TimedLines(io.StringIO):
    """stdout that notes when each line of analyze's progress arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.lines += [(time.perf_counter(), line) for line in text.splitlines() if line]
        return super().write(text)


def most_at_once_per_node(lines: list[tuple[float, str]]) -> int:
    """The most retrains that trained at the same time on one node (one logical GPU), from
    each retrain's `started` and `predicting` lines."""
    spans: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    for when, line in lines:
        found = re.match(r"\[analyze\] (retrain \S+ \(.*?\)) on node (\S+) .*?(: started| "
                         r"predicting)", line)
        if found:
            name, node, event = found.groups()
            spans[(name, node)]["start" if "started" in event else "end"] = when
    best = 0
    for (_, node), span in spans.items():
        overlapping = [other for (_, other_node), other in spans.items() if other_node == node
                       and other["start"] < span["end"] and other["end"] > span["start"]]
        best = max(best, len(overlapping))
    return best


def analyze(carsweep, experiment: Path, epochs: int, *extra: str) -> tuple[float, dict, int]:
    """(wall seconds, retrains per node, most at once on one node) of one analyze."""
    printed = TimedLines()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = carsweep(["analyze", str(experiment), "--seeds", "2", "--ensemble", "2",
                         "--epochs", str(epochs), *extra])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"analyze {' '.join(extra)} exited {code}")
    metrics = json.loads((experiment / "analysis" / "metrics.json").read_text())
    placed = [seed["node"] for seed in metrics["seeds"]]
    placed += [member["node"] for member in metrics["ensemble"]["members"][1:]]
    return seconds, dict(collections.Counter(placed)), most_at_once_per_node(printed.lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    from carsweep.cli import main as carsweep

    start_load = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = make_tiny_dataset(root / "data", per_split={"train": 16, "val": 4, "test": 8})
        common = {"object_store_memory": 300 * 1024**2, "include_dashboard": False}
        head = Cluster(initialize_head=True,
                       head_node_args={**common, "num_cpus": 1, "num_gpus": 0})
        try:
            for _ in range(args.workers):
                head.add_node(**common, num_cpus=4, num_gpus=1)
            head.wait_for_nodes()
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                code = carsweep(["sweep", str(sweep_yaml(root)), "--data", str(data),
                                 "--storage", str(root / "results"), "--address", head.address])
            if code != 0:
                raise SystemExit(f"the sweep exited {code}")
            experiment = root / "results" / "retrains"
            for label, extra in (("the trial's share, 0.25 GPU (before)", ["--retrain-gpus",
                                                                          "0.25"]),
                                 ("a whole GPU each (now)", [])):
                copy = root / f"copy-{len(rows)}"
                shutil.copytree(experiment, copy, symlinks=True)
                rows.append((label, *analyze(carsweep, copy, args.epochs, *extra)))
        finally:
            head.shutdown()
    print(describe(start_load))
    print("| retrain task asks | analyze wall time (s) | retrains per node | most at once on "
          "one GPU |\n|---|---|---|---|")
    for label, seconds, placed, at_once in rows:
        nodes = ", ".join(f"{node.split('/')[1]}: {count}" for node, count in placed.items())
        print(f"| {label} | {seconds:.1f} | {nodes} | {at_once} |")


if __name__ == "__main__":
    main()
