"""The cluster rehearsal (tests/test_rehearsal.py) at a size you choose, timed phase by phase.

A loopback Ray cluster of a GPU-less head and `--workers` nodes that declare one logical GPU
each, every worker in its own mount namespace with a tmpfs of its own over the cache folder
(tests/isolated_nodes.py: needs root); a Cars-shaped dataset (carsweep synth --preset cars);
a sweep with half a GPU per trial joined by address (the trainable computes on the CPU), then
`analyze` on the cluster. Prints what each phase took, the per-node cache lines the driver
showed, and where the trials and the retrain ran, as Markdown for BENCHMARKS.md.

    sudo .venv/bin/python bench/cluster_rehearsal.py [--classes 196] [--per-class 4]
        [--sizes 32,40] [--trials 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from machine import describe, load_average

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from isolated_nodes import start_isolated_node  # noqa: E402

NODE_STORE = 300 * 1024**2


class Timer:
    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        self.phases.append((name, time.perf_counter() - start))


def sweep_config(folder: Path, cache_dir: Path, sizes: list[int], trials: int) -> Path:
    config = {
        "name": "rehearsal", "num_samples": trials, "max_concurrent_trials": 2,
        "resources": {"cpu": 1, "gpu": 0.5}, "max_failures": 0,
        "asha": {"grace_period": 1, "reduction_factor": 3},
        "searcher": {"seed": 0, "n_startup_trials": trials},
        "space": {"optimizer": "adam", "lr": {"loguniform": [3.0e-4, 3.0e-3]}, "epochs": 3,
                  "batch_size": 32, "resize": {"choice": sizes}, "augmentation": "flip",
                  "weights": "none", "num_workers": 0, "data_cache": "on",
                  "cache_dir": str(cache_dir),
                  "device": "cpu"},  # the workers' GPUs are logical: train on their CPUs
    }
    path = folder / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rehearse(root: Path, args: argparse.Namespace, timer: Timer) -> dict:
    from ray.cluster_utils import Cluster

    from carsweep.cli import main as carsweep
    from carsweep.data.prepare import prepare_dataset
    from carsweep.data.synth_cars import make_cars_dataset
    from carsweep.results import read_result_rows

    with timer.phase(f"draw {args.classes} classes x {args.per_class + 1} JPEGs (700x480)"):
        source = make_cars_dataset(root / "source", classes=args.classes,
                                   per_class=args.per_class, test_per_class=1, progress=False)
    with timer.phase("prepare"):
        data = prepare_dataset(source, root / "data", val_fraction=0.25,
                               warn=lambda line: None).folder
    cache_dir = root / "node-local-cache"
    cache_dir.mkdir()
    with timer.phase(f"start head + {args.workers} isolated workers"):
        head = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0, "object_store_memory": NODE_STORE,
            "include_dashboard": False})
        workers = [start_isolated_node(head.address, [cache_dir], num_gpus=1,
                                       object_store_memory=NODE_STORE)
                   for _ in range(args.workers)]
    console = io.StringIO()
    try:
        config = sweep_config(root, cache_dir, args.sizes, args.trials)
        with timer.phase("sweep (pre-flight, per-node cache builds, trials)"), \
                contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            code = carsweep(["sweep", str(config), "--data", str(data), "--storage",
                             str(root / "results"), "--address", head.address])
        if code != 0:
            raise SystemExit(f"the sweep exited {code}:\n{console.getvalue()[-3000:]}")
        experiment = root / "results" / "rehearsal"
        with timer.phase("analyze on the cluster (1 retrain, 1 epoch)"), \
                contextlib.redirect_stdout(io.StringIO()):
            if carsweep(["analyze", str(experiment), "--epochs", "1"]) != 0:
                raise SystemExit("analyze failed")
    finally:
        for worker in workers:
            worker.stop()
        head.shutdown()
    trial_nodes = {row["node_id"][:8] for trial in experiment.glob("trial_*")
                   for row in read_result_rows(trial)}
    (seed,) = json.loads((experiment / "analysis" / "metrics.json").read_text())["seeds"]
    return {"cache_lines": [line for line in console.getvalue().splitlines()
                            if line.startswith("cache ") and (": built" in line)],
            "trial_nodes": sorted(trial_nodes), "retrained_on": seed["node"],
            "workers": [w.node_id[:8] for w in workers], "head": head.head_node.node_id[:8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=196)
    parser.add_argument("--per-class", type=int, default=4, help="train+val images per class")
    parser.add_argument("--sizes", default="32,40")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    start_load = load_average()
    timer = Timer()
    with tempfile.TemporaryDirectory() as folder:
        found = rehearse(Path(folder), args, timer)
    print(describe(start_load))
    print("| phase | seconds |\n|---|---|")
    for name, seconds in timer.phases:
        print(f"| {name} | {seconds:.1f} |")
    print(f"\nhead {found['head']}, workers {', '.join(found['workers'])}; trials ran on "
          f"{', '.join(found['trial_nodes'])}; analyze retrained on {found['retrained_on']}")
    print("\n".join(found["cache_lines"]))


if __name__ == "__main__":
    main()
