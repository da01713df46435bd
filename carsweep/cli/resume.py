"""`carsweep resume EXPERIMENT`: continue an interrupted sweep from its folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "continue an interrupted sweep; finished trials are kept, unfinished ones resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment folder, e.g. results/demo")
    parser.add_argument("--address", help="join a Ray cluster: 'auto' or HOST:PORT")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")


def run(args: argparse.Namespace) -> int:
    from carsweep.cli.sweep import report_outcome
    from carsweep.config.files import SWEEP_FILE
    from carsweep.config.sweep import load_sweep
    from carsweep.errors import UserError
    from carsweep.search import run_sweep

    sweep_file = args.experiment / SWEEP_FILE
    if not sweep_file.is_file():
        raise UserError(f"{args.experiment}: not a carsweep experiment (no {SWEEP_FILE})")
    overrides = [f"cluster.{key}={value}" for key, value in
                 (("address", args.address), ("num_cpus", args.num_cpus)) if value is not None]
    config = load_sweep(sweep_file, overrides)
    return report_outcome(config, run_sweep(config, resume=True))
