"""Does telling Optuna about ASHA's stops help? Stock OptunaSearch vs carsweep's searcher.

A cheap function trainable follows a closed-form learning curve where early scores mislead:
a high learning rate learns fast but plateaus low, a low one starts slow and ends high

    score(lr, wd, t) = ceiling(lr, wd) * (1 - exp(-speed(lr) * t)) + noise(t)
    speed   = 0.05 * 10 ** ((log10(lr) + 4) / 2)            # 0.05 at lr=1e-4, 5 at lr=1
    ceiling = 0.95 - 0.05 * (log10(lr) + 3) ** 2 - 0.005 * (log10(wd) + 4) ** 2

so at epoch 1 lr=1 leads (0.50 vs 0.15 for lr=1e-3), while at epoch 27 lr=1e-3 wins (0.94
vs 0.50). Both searchers get the same TPE sampler (carsweep's settings, same seed), the same
ASHA (grace 1, reduction 3, max_t 27) and the same trials budget, under real Ray Tune; a random
searcher runs too, as the floor that a model of the space has to beat.

The figures per run are TRUE final scores (score at max_t, without noise): of the config the
sweep picks (its best reported metric, as carsweep's trials table ranks them), of the best
config it tried at all, and the mean over the trials after the random start-up (what the
searcher's model suggested). Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/searcher_truth.py [--seeds 10] [--trials 30]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
import zlib

import numpy as np
import ray
from machine import describe, load_average
from ray import tune

from carsweep.config.sweep import SweepConfig
from carsweep.search.cluster import quiet_ray_environment
from carsweep.search.searcher import make_searcher
from carsweep.search.tuner import make_scheduler

METRIC = "val_top1"
MAX_T = 27
NOISE = 0.01  # per-epoch evaluation noise (a validation set of ~10k images)
STARTUP = 8  # random trials before TPE models anything
SEARCHERS = {  # name -> (sampler, pruning-aware); random is the floor a searcher must beat
    "random (no model)": ("random", False),
    "stock OptunaSearch (TPE)": ("tpe", False),
    "carsweep (TPE, pruning-aware)": ("tpe", True),
}


def speed(lr: float) -> float:
    return 0.05 * 10 ** ((math.log10(lr) + 4) / 2)


def ceiling(lr: float, weight_decay: float) -> float:
    return (0.95 - 0.05 * (math.log10(lr) + 3) ** 2
            - 0.005 * (math.log10(weight_decay) + 4) ** 2)


def true_score(config: dict, epoch: int) -> float:
    """The noiseless learning curve: what a config really reaches at `epoch`."""
    lr, wd = config["lr"], config["weight_decay"]
    return ceiling(lr, wd) * (1 - math.exp(-speed(lr) * epoch))


def synthetic_trainable(config: dict) -> None:
    """Reports the learning curve epoch by epoch, with noise seeded by the config."""
    key = zlib.crc32(repr(sorted(config.items())).encode())
    rng = np.random.default_rng(key)
    for epoch in range(1, config["epochs"] + 1):
        tune.report({"epoch": epoch, METRIC: true_score(config, epoch) + rng.normal(0, NOISE)})


class BestReported(tune.Callback):
    """Each trial's config and best reported metric, as the driver saw them, in start order."""

    def __init__(self) -> None:
        self.trials: dict[str, dict] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trials.setdefault(trial.trial_id, {"config": dict(trial.config), "best": -1.0})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self.trials.setdefault(trial.trial_id, {"config": dict(trial.config), "best": -1.0})
        row["best"] = max(row["best"], result[METRIC])
        row["epochs"] = result["epoch"]


def sweep_config(seed: int, trials: int, algorithm: str = "tpe") -> SweepConfig:
    return SweepConfig.model_validate({
        "num_samples": trials,
        "metric": METRIC,
        "mode": "max",
        "asha": {"grace_period": 1, "reduction_factor": 3},
        "searcher": {"algorithm": algorithm, "seed": seed, "n_startup_trials": STARTUP},
        "space": {
            "lr": {"loguniform": [1.0e-4, 1.0]},
            "weight_decay": {"loguniform": [1.0e-6, 1.0e-2]},
            "epochs": MAX_T,
        },
    })


def one_run(seed: int, trials: int, searcher: str, storage: str) -> dict:
    """One sweep with `searcher` (a key of SEARCHERS): what it picked and what it tried."""
    algorithm, pruning_aware = SEARCHERS[searcher]
    config = sweep_config(seed, trials, algorithm)
    seen = BestReported()
    tuner = tune.Tuner(
        tune.with_resources(synthetic_trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(config, pruning_aware=pruning_aware),
            scheduler=make_scheduler(config),
            num_samples=trials,
            max_concurrent_trials=2,
            reuse_actors=True,  # no GPU here; the trial process start-up would dominate
        ),
        run_config=tune.RunConfig(
            name=f"{algorithm}-{'carsweep' if pruning_aware else 'stock'}-{seed}",
            storage_path=storage, verbose=0, callbacks=[seen],
        ),
    )
    tuner.fit()
    picked = max(seen.trials.values(), key=lambda row: row["best"])
    tried = [true_score(r["config"], MAX_T) for r in seen.trials.values()]  # in start order
    return {
        "picked_final": true_score(picked["config"], MAX_T),
        "tried_best_final": max(tried),
        "suggested_mean_final": statistics.mean(tried[STARTUP:]),
        "configs": [tuple(sorted(r["config"].items())) for r in seen.trials.values()],
        "epochs_run": sum(r.get("epochs", 0) for r in seen.trials.values()),
    }


def mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    quiet_ray_environment()
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial files
    optimum = max(true_score({"lr": 10 ** x, "weight_decay": 1e-4}, MAX_T)
                  for x in np.linspace(-4, 0, 4001))
    results: dict[str, list[dict]] = {name: [] for name in SEARCHERS}
    start, start_load = time.perf_counter(), load_average()
    ray.init(_node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory() as storage:
            for seed in range(args.seeds):
                for name in SEARCHERS:
                    results[name].append(one_run(seed, args.trials, name, storage))
                print(f"seed {seed}: " + ", ".join(
                    f"{n} {r[-1]['picked_final']:.3f}" for n, r in results.items()), flush=True)
    finally:
        ray.shutdown()
    print(f"\n{describe(start_load)}\n{args.seeds} seeds x {args.trials} trials per searcher "
          f"({STARTUP} random first); ASHA grace 1, rf 3, max_t {MAX_T}; "
          f"optimum {optimum:.3f}; {time.perf_counter() - start:.0f} s\n")
    print_table(results, optimum)
    stock, aware = results["stock OptunaSearch (TPE)"], results["carsweep (TPE, pruning-aware)"]
    wins = sum(c["picked_final"] > s["picked_final"] for s, c in zip(stock, aware, strict=True))
    losses = sum(c["picked_final"] < s["picked_final"] for s, c in zip(stock, aware, strict=True))
    same = sum(s["configs"] == c["configs"] for s, c in zip(stock, aware, strict=True))
    print(f"\ncarsweep's pick vs stock's, same seed: better on {wins}, worse on {losses}, "
          f"equal on {args.seeds - wins - losses} of {args.seeds} seeds; the two tried exactly "
          f"the same configs on {same} seeds")


def print_table(results: dict[str, list[dict]], optimum: float) -> None:
    print("| searcher | true final score of the picked config | best true final among "
          f"configs tried | mean true final of trials {STARTUP + 1}+ (the model's suggestions) "
          "| picked within 0.01 of optimum | epochs trained |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        picked = [r["picked_final"] for r in rows]
        near = sum(p >= optimum - 0.01 for p in picked)
        print(f"| {name} | {mean_spread(picked)} "
              f"| {mean_spread([r['tried_best_final'] for r in rows])} "
              f"| {mean_spread([r['suggested_mean_final'] for r in rows])} "
              f"| {near}/{len(rows)} | {statistics.mean(r['epochs_run'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
