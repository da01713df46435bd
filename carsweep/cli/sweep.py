"""`carsweep sweep CONFIG.yaml --data DATASET`: run (or --resume) a hyperparameter sweep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from carsweep.cli.arguments import COUNT, SEED

HELP = ("run a hyperparameter sweep (Ray Tune + Optuna, trials stopped early by ASHA, PASHA or "
        "the median rule), or resume one")
EPILOG = "Every sweep and trial setting and augmentation preset: carsweep settings"

# Flags that set a SweepConfig field; each is a shorthand for `--set FIELD=VALUE`.
FIELD_FLAGS = {
    "data": "dataset",
    "name": "name",
    "storage": "storage_path",
    "num_samples": "num_samples",
    "max_concurrent": "max_concurrent_trials",
    "address": "cluster.address",
    "num_cpus": "cluster.num_cpus",
    "dashboard": "cluster.dashboard",
    "seed": "searcher.seed",
    "scheduler": "scheduler",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="sweep config YAML (see configs/demo.yaml)")
    parser.add_argument("--data", help="prepared dataset folder, readable from every Ray node")
    parser.add_argument("--name", help="experiment name (default: the config file's name)")
    parser.add_argument("--storage", help="where experiments go: a folder, NFS path or URI")
    parser.add_argument("--num-samples", type=COUNT, help="number of trials")
    parser.add_argument("--max-concurrent", type=COUNT, help="trials running at once")
    parser.add_argument("--address", help="join a Ray cluster: 'auto' or HOST:PORT")
    parser.add_argument("--num-cpus", type=COUNT, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--dashboard", action="store_true", default=None,
                        help="start Ray's dashboard (bound to 127.0.0.1 unless "
                        "--set cluster.dashboard_host=...)")
    parser.add_argument("--seed", type=SEED, help="the searcher's seed")
    parser.add_argument("--scheduler", help="asha (the default), pasha, median, or fifo (no "
                        "early stopping): docs/schedulers.md")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any config field, e.g. --set asha.grace_period=2 --set space.lr=0.01",
    )
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep of this name and storage")
    parser.add_argument("--check", action="store_true",
                        help="run the pre-flight check (config, ASHA rungs, a dry step, every "
                        "node's paths, GPU memory), print it and exit 0/2 without launching")


def field_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` strings for the flags given, then the explicit `--set`s (which win)."""
    given = [
        f"{field}={getattr(args, flag)}"
        for flag, field in FIELD_FLAGS.items()
        if getattr(args, flag) is not None
    ]
    return [*given, *args.overrides]


def run(args: argparse.Namespace) -> int:
    from carsweep.config.sweep import load_sweep
    from carsweep.search import run_sweep

    config = load_sweep(args.config, field_overrides(args))
    if args.check:
        from carsweep.search.preflight import preflight, print_report

        return print_report(preflight(config))
    return report_outcome(config, run_sweep(config, resume=args.resume))


def report_outcome(config, outcome) -> int:
    """Print the final trials table, the best trial and the commands to go on with; failures
    and diverged trials on stderr. 1 when no trial worked (every one failed or diverged)."""
    from carsweep.results.console import compact_table, metric_text, state_counts
    from carsweep.results.store import diverged, no_best_trial

    table = outcome.table
    blown = list(table.loc[diverged(table), "trial_id"])
    if outcome.nothing_to_resume:
        print(f"every trial of {outcome.experiment} has ended: nothing to resume, "
              f"{outcome.nothing_to_resume}")
    print(f"\n{compact_table(table, config.metric, list(config.searched()))}")
    print(f"\nexperiment: {outcome.experiment}  ({state_counts(table)})")
    failed = len(outcome.errors) + len(blown)
    if outcome.trials and failed >= outcome.trials and not outcome.interrupted:
        print("carsweep sweep: no trial worked, so there is no best trial to analyze: "
              f"{_none_worked(outcome.errors, blown)}", file=sys.stderr)
        return 1
    if outcome.best_trial is None:
        print(no_best_trial(table, config.metric))
    else:
        print(f"best trial: {outcome.best_trial}  {config.metric} = "
              f"{metric_text(config.metric, outcome.best_value)}")
        print(next_commands(outcome.experiment))
    if outcome.errors:
        print(f"{len(outcome.errors)} trial(s) failed; first error: {outcome.errors[0]}",
              file=sys.stderr)
    if blown:
        print(f"{len(blown)} trial(s) diverged (loss NaN/inf) and were not retried: "
              f"{', '.join(map(str, blown))}; see the error column of trials.csv",
              file=sys.stderr)
    if outcome.interrupted:
        print(f"sweep stopped before every trial ended; its state is saved. "
              f"Resume with:\n  {resume_command(config, outcome.experiment)}", file=sys.stderr)
        return 130
    return 0


def _none_worked(errors: tuple[str, ...], blown: list) -> str:
    """Why no trial worked, in a few words and the first cause."""
    from carsweep.results.store import diverged_cause

    parts = []
    if blown:
        parts.append(diverged_cause(len(blown)))
    if errors:
        parts.append(f"{len(errors)} failed (first error: {errors[0]})")
    return "; ".join(parts)


def next_commands(experiment: Path) -> str:
    """What to run next on a finished sweep, with its folder as this shell can name it."""
    import os
    import shlex

    from carsweep.storage import is_bucket

    relative = str(experiment) if is_bucket(experiment) else os.path.relpath(experiment)
    folder = shlex.quote(relative if not relative.startswith("..") else str(experiment))
    commands = [(f"carsweep analyze {folder}", "retrain the best on train+val, test once, report"),
                (f"tensorboard --logdir {folder}", "every trial's curves per epoch, HParams"),
                (f"carsweep dashboard {folder}", "the Optuna study: history, importances, slices")]
    if is_bucket(experiment):  # TensorBoard without TensorFlow reads no bucket: the dashboard
        del commands[1]        # serves it from a local mirror
    width = max(len(command) for command, _ in commands)
    return "next:\n" + "\n".join(f"  {command.ljust(width)}  # {why}" for command, why in commands)


def resume_command(config, experiment: Path) -> str:
    """The `carsweep resume` line that continues this sweep, quoted for a POSIX shell."""
    import shlex

    words = ["carsweep", "resume", str(experiment)]
    if config.cluster.address is not None:
        words += ["--address", config.cluster.address]
    elif config.cluster.num_cpus is not None:
        words += ["--num-cpus", str(config.cluster.num_cpus)]
    return shlex.join(words)
