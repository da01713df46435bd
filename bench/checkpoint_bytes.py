"""Checkpoint bytes one sweep writes: every epoch (before) vs ASHA's rungs + the end (after).

The same sweep twice, on a Cars-shaped dataset (196 classes, so the head and the checkpoint
have Stanford Cars' size: ResNet-18 with its optimizer state), with configs/stanford-cars.yaml's
ASHA (grace 3, reduction factor 3, max_t 30) and the same searcher seed: once with
`checkpoint_every_min: 0` (a checkpoint every epoch, as carsweep did before) and once with the
default policy (ASHA's rungs, a trial's last epoch, and at most one every 10 minutes between).
Tiny images (32 px), so the CPU runs it; the bytes do not depend on the image size.

Bytes written = for each trial, the checkpoints it reported (result.json rows that name a
checkpoint) x the size of one of its checkpoints on disk (Ray keeps the best two; every
checkpoint of a trial has the same size). Printed as a Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/checkpoint_bytes.py [--trials 6] [--images-per-class 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from machine import describe, load_average

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

SPACE = {
    "optimizer": {"choice": ["sgd", "adam"]},
    "lr": [{"loguniform": [1.0e-3, 0.1], "when": {"optimizer": ["sgd"]}},
           {"loguniform": [1.0e-5, 3.0e-3], "when": {"optimizer": ["adam"]}}],
    "epochs": 30, "batch_size": 32, "resize": 32, "augmentation": "flip", "weights": "none",
    "num_workers": 0, "device": "cpu", "data_cache": "off",
}


def sweep(data: Path, storage: Path, trials: int, every_min: float):
    from carsweep.config.sweep import SweepConfig
    from carsweep.search import run_sweep

    config = SweepConfig.model_validate({
        "name": f"every-{every_min:g}", "dataset": str(data), "storage_path": str(storage),
        "num_samples": trials, "max_concurrent_trials": 2, "resources": {"cpu": 1, "gpu": 0},
        "cluster": {"num_cpus": 2}, "checkpoint_every_min": every_min,
        "asha": {"grace_period": 3, "reduction_factor": 3},
        "searcher": {"seed": 0, "n_startup_trials": trials}, "space": SPACE,
    })
    start = time.perf_counter()
    outcome = run_sweep(config, verbose=0)
    return outcome.experiment, time.perf_counter() - start


def bytes_written(experiment: Path) -> dict:
    """Checkpoints reported and bytes written, summed over the experiment's trials."""
    from carsweep.results import read_result_rows

    count = written = epochs = 0
    for trial in sorted(experiment.glob("trial_*")):
        rows = read_result_rows(trial)
        reported = [row for row in rows if row.get("checkpoint_dir_name")]
        kept = next(trial.glob("checkpoint_*"), None)
        size = sum(f.stat().st_size for f in kept.rglob("*") if f.is_file()) if kept else 0
        count, written, epochs = count + len(reported), written + len(reported) * size, \
            epochs + len(rows)
    return {"epochs": epochs, "checkpoints": count, "bytes": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--images-per-class", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from carsweep.data.prepare import prepare_dataset
    from carsweep.data.synth_cars import make_cars_dataset

    start_load = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        source = make_cars_dataset(root / "source", per_class=args.images_per_class + 1,
                                   test_per_class=1, progress=False)
        data = prepare_dataset(source, root / "data", val_fraction=0.25,
                               warn=lambda line: None).folder
        for every_min in (0.0, 10.0):
            experiment, seconds = sweep(data, root / "results", args.trials, every_min)
            rows.append({"checkpoint_every_min": every_min, "wall_s": seconds,
                         **bytes_written(experiment)})
    print(describe(start_load))
    print("| policy | trial-epochs | checkpoints written | bytes written | per trial-epoch |")
    print("|---|---|---|---|---|")
    for row in rows:
        policy = ("every epoch (before)" if row["checkpoint_every_min"] == 0
                  else "rungs + last epoch + every 10 min (after)")
        per_epoch = row["bytes"] / max(row["epochs"], 1) / 1e6
        print(f"| {policy} | {row['epochs']} | {row['checkpoints']} | "
              f"{row['bytes'] / 1e9:.2f} GB | {per_epoch:.0f} MB |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
