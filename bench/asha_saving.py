"""ASHA's saving on the demo sweep: epochs actually trained / (trials x max_t), and best metric.

Runs configs/demo.yaml twice on the same data, same searcher seed: with ASHA, and with FIFO
(no early stopping). Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/asha_saving.py --data demo/data [--config configs/demo.yaml]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from carsweep.config.sweep import load_sweep
from carsweep.search import run_sweep, trials_table


def measure(config_path: Path, data: Path, scheduler: str, storage: Path) -> dict:
    config = load_sweep(config_path, [f"dataset={data}", f"storage_path={storage}",
                                      f"scheduler={scheduler}", f"name=bench-{scheduler}"])
    start = time.perf_counter()
    outcome = run_sweep(config, verbose=0)
    seconds = time.perf_counter() - start
    table = trials_table(outcome.experiment, config.metric, config.mode)
    budget = len(table) * config.max_t
    return {
        "scheduler": scheduler,
        "trials": len(table),
        "epochs": int(table["epochs_run"].sum()),
        "fraction": table["epochs_run"].sum() / budget,
        "stopped": int(table["stopped_early"].sum()),
        "best": table[f"best_{config.metric}"].max(),
        "seconds": seconds,
        "metric": config.metric,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        rows = [measure(args.config, args.data, s, Path(storage)) for s in ("asha", "fifo")]
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
          f"config {args.config}, data {args.data}")
    print(f"| scheduler | trials | stopped early | epochs run | ÷ (trials × max_t) "
          f"| best {rows[0]['metric']} | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scheduler']} | {r['trials']} | {r['stopped']} | {r['epochs']} "
              f"| {r['fraction']:.2f} | {r['best']:.3f} | {r['seconds']:.0f} |")
    asha, fifo = rows
    print(f"\nASHA trained {asha['epochs'] / fifo['epochs']:.2f}x the epochs of FIFO "
          f"in {asha['seconds'] / fifo['seconds']:.2f}x the time")


if __name__ == "__main__":
    main()
