"""What the sweep machinery costs per trial when training costs nothing.

A sweep of `--trials` trials whose step does no work: each reports `--epochs` results at once
(a made-up metric of its parameters), through carsweep's own Tuner (`search.tuner.new_tuner`:
the Optuna searcher told of ASHA's stops, ASHA, the live HParams callback, the console
reporter, checkpoint bookkeeping, a fresh process per trial). What is left is the driver's and
Ray's cost per trial: suggesting, scheduling, starting the trial's process, taking its
results, writing the experiment state. Printed as one Markdown row for BENCHMARKS.md.

    .venv/bin/python bench/driver_overhead.py --trials 200 [--epochs 4] [--concurrent 2]
    .venv/bin/python bench/driver_overhead.py --smoke      # 6 trials, seconds (the tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

from machine import describe, load_average

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only, before Ray starts


def noop_trial(params: dict) -> None:
    """Report every epoch at once: a score that prefers lr near 1e-2 and improves with epochs."""
    from ray import tune

    closeness = math.exp(-abs(math.log10(params["lr"]) + 2.0))
    for epoch in range(1, int(params["epochs"]) + 1):
        tune.report({"epoch": epoch, "val_top1": closeness * epoch / int(params["epochs"])})


def measure(trials: int, epochs: int, concurrent: int, storage: Path) -> dict:
    from ray import tune

    from carsweep.config.sweep import SweepConfig
    from carsweep.search.cluster import ray_session
    from carsweep.search.tuner import experiment_path, new_tuner

    config = SweepConfig.model_validate({
        "name": "noop", "storage_path": str(storage), "num_samples": trials,
        "max_concurrent_trials": concurrent, "resources": {"cpu": 1, "gpu": 0},
        "cluster": {"num_cpus": concurrent},
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "searcher": {"seed": 0, "n_startup_trials": 10},
        "space": {"optimizer": {"choice": ["sgd", "adam"]},
                  "lr": {"loguniform": [1.0e-4, 1.0]}, "epochs": epochs},
    })
    trainable = tune.with_resources(noop_trial, {"cpu": 1})
    experiment_path(config).mkdir(parents=True)  # the study goes in it (run_sweep makes it)
    with ray_session(config.cluster):
        start = time.perf_counter()
        results = new_tuner(config, trainable, verbose=0).fit()
        seconds = time.perf_counter() - start
    reported = sum(len(r.metrics_dataframe) for r in results if r.metrics_dataframe is not None)
    return {"trials": len(results), "errors": len(results.errors), "results": reported,
            "concurrent": concurrent, "wall_s": seconds, "per_trial_s": seconds / len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="6 trials of 2 epochs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    trials, epochs = (6, 2) if args.smoke else (args.trials, args.epochs)
    start_load = load_average()
    with tempfile.TemporaryDirectory() as storage:
        row = measure(trials, epochs, args.concurrent, Path(storage))
    print(describe(start_load))
    print("| trials | concurrent | results reported | errors | sweep wall s | s per trial |")
    print("|---|---|---|---|---|---|")
    print(f"| {row['trials']} | {row['concurrent']} | {row['results']} | {row['errors']} | "
          f"{row['wall_s']:.0f} | {row['per_trial_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
