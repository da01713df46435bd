"""`carsweep status EXPERIMENT`: the trials so far and the best one, read from the folder.

Reads the study and the trial folders (carsweep.results) and writes nothing, so it works while
the sweep runs, after it, and on a read-only copy of the experiment; it needs no Ray. For an
experiment in a bucket it first says when the sweep's driver uploaded what it shows
(results/snapshot.py): the bucket is as fresh as the driver's last snapshot.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from carsweep.cli.arguments import place

HELP = "show a sweep's trials (state, epochs, best metric, parameters) and its best trial so far"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=place,
                        help="experiment folder or URI, e.g. results/demo, s3://bucket/results/demo")


def run(args: argparse.Namespace) -> int:
    from carsweep.results import load_experiment
    from carsweep.results.console import compact_table, state_counts
    from carsweep.results.snapshot import freshness_line, latest_snapshot
    from carsweep.storage import is_bucket

    experiment = load_experiment(args.experiment)
    sweep, table = experiment.sweep, experiment.trials
    if is_bucket(experiment.folder):
        snapshot = latest_snapshot(experiment.folder)  # its listing; a HEAD, a ranged GET
        print(freshness_line(snapshot, datetime.now(UTC)), end="\n\n")
    print(compact_table(table, sweep.metric, list(sweep.searched())))
    print(f"\n{state_counts(table, sweep.num_samples)}")
    print(best_trial_line(experiment))
    return 0


def best_trial_line(experiment) -> str:
    """`best trial: 52b10f2b  val_top1 = 93.75%  (COMPLETE, 4 epochs)  checkpoint: ...`, or
    why there is none."""
    from carsweep.results.console import metric_text
    from carsweep.results.store import no_best_trial

    row = experiment.best_row()
    if row is None:
        return no_best_trial(experiment.trials, experiment.sweep.metric)
    metric = experiment.sweep.metric
    checkpoint = row["best_checkpoint"] if isinstance(row["best_checkpoint"], str) else "none"
    value = metric_text(metric, row[f"best_{metric}"])
    return (f"best trial: {row['trial_id']}  {metric} = {value}  "
            f"({row['state']}, {row['epochs_run']} epochs)  checkpoint: {checkpoint}")
