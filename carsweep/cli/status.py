"""`carsweep status EXPERIMENT`: the trials table and the best trial so far."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "show a sweep's trials (state, epochs, last/best metric) and its best trial so far"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment folder, e.g. results/demo")


def run(args: argparse.Namespace) -> int:
    from carsweep.config.sweep import load_sweep
    from carsweep.errors import UserError
    from carsweep.search import format_table, save_trials_table, trials_table

    sweep_file = args.experiment / "sweep.yaml"
    if not sweep_file.is_file():
        raise UserError(f"{args.experiment}: not a carsweep experiment (no sweep.yaml)")
    config = load_sweep(sweep_file)
    table = trials_table(args.experiment, config.metric, config.mode)
    saved = save_trials_table(table, args.experiment)
    print(format_table(table, config.metric))
    best = table.dropna(subset=[f"best_{config.metric}"])
    if best.empty:
        print("\nNo trials are completed yet.")
    else:
        row = best.iloc[0]
        value = row[f"best_{config.metric}"]
        print(f"\nbest trial: {row['trial_id']}  {config.metric} = {value:.4f}  "
              f"({row['state']}, {row['epochs_run']} epochs)  checkpoint: {row['best_checkpoint']}")
    print(f"table saved: {saved}")
    return 0
