"""`carsweep resume EXPERIMENT`: continue an interrupted sweep from its folder.

The experiment is the folder given, wherever it is now: sweep.yaml records the storage path
and name it was launched with, and a copied or moved experiment resumed from those would
rewrite the original (Tune's state, trials.csv) and leave the copy as it was. Ray Tune
restores a moved experiment folder by itself."""

from __future__ import annotations

import argparse

from carsweep.cli.arguments import COUNT, place

HELP = "continue an interrupted sweep; finished trials are kept, unfinished ones resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=place,
                        help="experiment folder or URI, e.g. results/demo, s3://bucket/results/demo")
    parser.add_argument("--address", help="join a Ray cluster: 'auto' or HOST:PORT")
    parser.add_argument("--num-cpus", type=COUNT, help="CPUs of the local Ray (default: all)")


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
    here = args.experiment.expanduser().resolve()
    config = load_sweep(sweep_file, overrides).model_copy(
        update={"storage_path": str(here.parent), "name": here.name})
    return report_outcome(config, run_sweep(config, resume=True))
