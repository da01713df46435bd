"""Run a sweep: Ray Tune's Tuner with carsweep's Optuna searcher and ASHA, or resume one.

Order matters for "nothing written on bad input": every check (config, augmentations, dataset,
GPUs) runs before the experiment folder is created; Ray is started only after the checks that
need no Ray, and the cluster's resources are checked before the Tuner is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.utils import flatten_dict

from carsweep.config.files import SWEEP_FILE, TRIALS_FILE, TUNER_FILE, trial_dir_name
from carsweep.config.io import changed_settings
from carsweep.config.sweep import SweepConfig, save_sweep
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError, last_line
from carsweep.results import save_trials_table, trials_table
from carsweep.results.store import best_trial_row, read_result_rows
from carsweep.results.study import driver_study_file, fetch_driver_study
from carsweep.search.cluster import ray_session
from carsweep.search.median import MedianStopping
from carsweep.search.monitor import (
    CompactReporter,
    DivergedTrialsCallback,
    LiveHParamsCallback,
    reporter_resumed_with,
)
from carsweep.search.pasha import PashaScheduler, PauseAwareLimiter
from carsweep.search.preflight.caches import prebuild_node_caches
from carsweep.search.preflight.config_checks import check_storage_writable
from carsweep.search.preflight.run import Launch, check_before_launch, check_before_ray
from carsweep.search.resume_files import check_resume_files_whole
from carsweep.search.searcher import make_searcher, searcher_resumed_in
from carsweep.search.sweep_inputs import resolved, shipped_weights
from carsweep.search.trial import run_trial
from carsweep.storage import BucketPath, is_bucket, location

if TYPE_CHECKING:  # torch is imported where training starts, not with this module
    from carsweep.trainable.checkpoint import CheckpointPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOutcome:
    experiment: Path
    trials: int
    best_trial: str | None
    best_value: float | None
    errors: tuple[str, ...] = ()  # one line per trial that ended in ERROR
    interrupted: bool = False  # stopped (Ctrl-C) before every trial ended; resume continues it
    nothing_to_resume: str = ""  # a resume of a sweep whose every trial had ended: what it did
    # The trials table as saved in trials.csv, so the CLI need not read the experiment again.
    table: pd.DataFrame | None = field(default=None, repr=False, compare=False)


def experiment_path(config: SweepConfig) -> Path | BucketPath:
    return location(config.storage_path).resolve() / config.name


def make_scheduler(config: SweepConfig) -> TrialScheduler:
    if config.scheduler == "fifo":
        return FIFOScheduler()
    if config.scheduler == "median":
        return MedianStopping(metric=config.metric, mode=config.mode,
                              grace_period=config.median_grace(),
                              min_samples_required=config.median.min_samples_required)
    if config.scheduler == "pasha":
        return PashaScheduler(metric=config.metric, mode=config.mode,
                              rungs=config.rung_epochs()[:-1], max_t=config.max_t,
                              reduction_factor=config.asha.reduction_factor,
                              epsilon_percentile=config.pasha.epsilon_percentile)
    return ASHAScheduler(
        time_attr="epoch",
        metric=config.metric,
        mode=config.mode,
        max_t=config.max_t,
        grace_period=config.asha.grace_period,
        reduction_factor=config.asha.reduction_factor,
    )


def run_sweep(config: SweepConfig, *, resume: bool = False, verbose: int = 1) -> SweepOutcome:
    """Check, then run (or resume) the sweep; the trials table is written at the end."""
    config = resolved(config)
    check_before_ray(config)
    experiment = experiment_path(config)
    _check_experiment_folder(experiment, resume)
    if resume:
        check_resume_unchanged(config, experiment)
        if (ended := _ended_sweep(config, experiment)) is not None:
            return ended  # no Ray started, nothing rewritten
    check_storage_writable(experiment)
    weights = shipped_weights(config)  # a bad weights file stops here, before anything is written
    with ray_session(config.cluster):
        # resources, GPUs, a dry step, every node's paths and caches, the real step per GPU type
        launch = check_before_launch(config)
        prebuild_node_caches(config)  # each node's decoded caches, progress on this console
        saved_trials, finished = study_ready_to_resume(config, experiment) if resume \
            else (None, {})
        with searcher_resumed_in(experiment, saved_trials), reporter_resumed_with(finished), \
                _snapshot_period(experiment):
            # Tune unpickles the searcher and the reporter in restore and in fit, and reads
            # the period in fit
            if resume:
                tuner = _restored_tuner(experiment, _trainable(config, weights, launch))
            else:
                if is_bucket(experiment):  # the driver's study of a sweep gone from the bucket
                    driver_study_file(experiment).unlink(missing_ok=True)
                save_sweep(config, experiment / SWEEP_FILE)
                tuner = new_tuner(config, _trainable(config, weights, launch), verbose=verbose)
            with _without_tune_restore_hint():
                results = tuner.fit()
    table = trials_table(experiment, config)
    save_trials_table(table, experiment)
    return _outcome(experiment, table, config,
                    errors=tuple(last_line(error) for error in results.errors),
                    interrupted=_unfinished(table, config.num_samples))


def _outcome(experiment: Path | BucketPath, table: pd.DataFrame, config: SweepConfig,
             **ending) -> SweepOutcome:
    best = best_trial_row(table, config.metric, config.mode)
    return SweepOutcome(
        experiment=experiment,
        trials=len(table),
        best_trial=None if best is None else str(best["trial_id"]),
        best_value=None if best is None else float(best["best_" + config.metric]),
        table=table,
        **ending,
    )


def _ended_sweep(config: SweepConfig, experiment: Path | BucketPath) -> SweepOutcome | None:
    """The outcome of a sweep whose every trial completed or was stopped by the scheduler,
    None while one is left to run. A failed trial is not ended here: a resume retries it."""
    table = trials_table(experiment, config)
    if len(table) < config.num_samples or not table["state"].isin(["COMPLETE", "PRUNED"]).all():
        return None
    saved = experiment / TRIALS_FILE  # a driver killed after the last trial ended never wrote it
    if not saved.is_file() or saved.read_text() != table.to_csv(index=False):
        save_trials_table(table, experiment)
        return _outcome(experiment, table, config,
                        nothing_to_resume="trials.csv brought up to date")
    return _outcome(experiment, table, config, nothing_to_resume="nothing changed")


# How often Tune's driver snapshots an experiment in a bucket (its state, the study journal,
# every trial's result.json, progress.csv and events): TUNE_GLOBAL_CHECKPOINT_S, read when
# the Tuner starts; `status`, `analyze` and the dashboard lag behind it. Each snapshot uploads
# the whole staging folder again, finished trials too: on S3 16 write requests per trial (five
# small files, each a 3-request multipart upload with pyarrow, and a folder marker;
# BENCHMARKS.md, "The experiment in a bucket"), so a 64-trial sweep makes ~35 write requests/s
# at 30 s, ~100 at Ray's own `auto` (10 s at first). 30 s keeps `status` at most half a minute
# behind. A folder keeps Ray's period: copies on one disk cost no requests. A user's export
# wins; a resume keeps the period its sweep was launched with (Ray restores it with its state).
BUCKET_SNAPSHOT_PERIOD_S = 30
SNAPSHOT_PERIOD = "TUNE_GLOBAL_CHECKPOINT_S"


@contextmanager
def _snapshot_period(experiment: Path | BucketPath) -> Iterator[None]:
    """BUCKET_SNAPSHOT_PERIOD_S for a bucket's sweep unless the user set one; this process's
    environment as it was after (the next sweep may be a folder's)."""
    if not is_bucket(experiment) or SNAPSHOT_PERIOD in os.environ:
        yield
        return
    os.environ[SNAPSHOT_PERIOD] = str(BUCKET_SNAPSHOT_PERIOD_S)
    try:
        yield
    finally:
        os.environ.pop(SNAPSHOT_PERIOD, None)


def _restored_tuner(experiment: Path | BucketPath, trainable) -> tune.Tuner:
    where = ray_storage(experiment)
    return tune.Tuner.restore(where["storage_path"], trainable=trainable,
                              resume_unfinished=True, resume_errored=True,
                              storage_filesystem=where["storage_filesystem"])


class _TuneRestoreHint(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" after a Ctrl-C: carsweep's users
    resume with `carsweep resume`, the line the CLI prints last."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextmanager
def _without_tune_restore_hint() -> Iterator[None]:
    tune_logger, hint = logging.getLogger("ray.tune.tune"), _TuneRestoreHint()
    tune_logger.addFilter(hint)
    try:
        yield
    finally:
        tune_logger.removeFilter(hint)


def _unfinished(table, num_samples: int) -> bool:
    """Tune returns normally on Ctrl-C: trials still running, or never created."""
    ended = table["state"].isin(["COMPLETE", "PRUNED", "FAIL"]).all() if len(table) else False
    return len(table) < num_samples or not ended


def study_ready_to_resume(config: SweepConfig, experiment: Path | BucketPath
                          ) -> tuple[frozenset[str], dict[str, list[dict]]]:
    """Before a resume: the driver's study (for an experiment in a bucket, the bucket's: a new
    head has none), told the known ends. Returns the Ray trials Tune's saved state has, which
    the resumed searcher gives their own study trials (search/searcher.py), and the result
    rows of those that finished after that state was saved, which the console table shows
    (search/monitor.py)."""
    if is_bucket(experiment):
        fetch_driver_study(experiment)
    where = ray_storage(experiment)
    saved = tune.ExperimentAnalysis(where["storage_path"],
                                    storage_filesystem=where["storage_filesystem"]).trials
    finished = tell_study_the_known_ends(config, experiment, saved)
    return frozenset(trial.trial_id for trial in saved), finished


def tell_study_the_known_ends(config: SweepConfig, experiment: Path | BucketPath,
                              saved: list[Trial]) -> dict[str, list[dict]]:
    """Before a resume: the study on the driver's disk gets the end of every trial that has
    ended but that the study has unfinished. A trial has ended when Tune's saved state has it
    TERMINATED (Tune skips it on resume and never reports it again), or when its result.json
    holds every one of its epochs while Tune's state is older (the resume restarts it from its
    last checkpoint, trains nothing, and Ray reports the end with the older last result).
    Without this such a trial stays RUNNING, or ends PRUNED, in the study. Where the experiment
    is in a bucket, the study and Tune's state can both be older than the trial's folder: a
    killed driver's last upload was cut short or mixed saves (search/searcher.py).
    Returns the result rows of the trials that had finished where Tune's state has them
    unfinished."""
    ended, finished = {}, {}
    for trial in saved:
        if trial.status == Trial.TERMINATED:
            ended[trial.trial_id] = flatten_dict(trial.last_result)
            continue
        rows = read_result_rows(experiment / trial_dir_name(trial.trial_id))
        planned = int(trial.config.get("epochs", TrialConfig.model_fields["epochs"].default))
        if rows and int(rows[-1].get("epoch", 0)) >= planned:
            ended[trial.trial_id] = flatten_dict(rows[-1])
            finished[trial.trial_id] = rows
    if not driver_study_file(experiment).is_file():
        return finished  # a sweep from before carsweep kept a study
    # A new searcher enqueues the points to evaluate in its study: these ran at launch.
    searcher = config.searcher.model_copy(update={"points_to_evaluate": []})
    told = _searcher_of(config.model_copy(update={"searcher": searcher}), experiment).tell_ends(
        ended)
    if told:
        logger.info("study: the end of %s told from Tune's state and the trials' results (the "
                    "study was older)", ", ".join(told))
    return finished


def ray_storage(folder: Path | BucketPath) -> dict:
    """Ray's storage_path and storage_filesystem for `folder`: a local path as it is; a bucket
    as its pyarrow filesystem and the path in it, so the URI's endpoint options travel to
    every node with the filesystem (its pickle holds no credentials: each node finds its own)."""
    if is_bucket(folder):
        return {"storage_path": folder.fs_path, "storage_filesystem": folder.filesystem}
    return {"storage_path": str(folder), "storage_filesystem": None}


def _check_experiment_folder(experiment: Path | BucketPath, resume: bool) -> None:
    exists = (experiment / TUNER_FILE).is_file()
    if resume and not exists:
        raise UserError(f"{experiment}: no sweep to resume there")
    if not resume and (exists or (experiment / SWEEP_FILE).is_file()):
        raise UserError(
            f"{experiment}: a sweep already exists there; add --resume to continue it "
            "or give another --name"
        )
    if resume and not is_bucket(experiment):  # a PUT replaces an object whole or not at all
        check_resume_files_whole(experiment)


# What a resume may change: where the experiment and the dataset are now, and the Ray it runs
# on. Everything else Tune restores as it was launched.
RESUMABLE_CHANGES = frozenset({"name", "storage_path", "dataset", "cluster"})


def check_resume_unchanged(config: SweepConfig, experiment: Path) -> None:
    """A resume continues the sweep as launched: settings that differ from its sweep.yaml
    would be dropped silently by Tune's restore, so they are refused in one line instead."""
    from carsweep.config.sweep import load_sweep

    saved = resolved(load_sweep(experiment / SWEEP_FILE)).to_yaml_dict()
    changed = changed_settings(saved, config.to_yaml_dict(), RESUMABLE_CHANGES)
    if changed:
        raise UserError(f"{experiment}: a resume continues the sweep as it was launched, but "
                        f"these settings differ from its sweep.yaml: {'; '.join(changed)}; "
                        "drop them (only the cluster, the storage and the dataset's place "
                        "may change), or start a new sweep with another --name")


def _trainable(config: SweepConfig, weights: dict[tuple[str, str], dict],
               launch: Launch) -> tune.Trainable:
    trainable = tune.with_parameters(
        run_trial, dataset=config.dataset, gpu=config.resources.gpu,
        gpu_context_bytes=launch.gpu_context_bytes,
        metric=config.metric, mode=config.mode, checkpoints=checkpoint_policy(config),
        shipped_weights=weights,
    )
    return tune.with_resources(
        trainable, {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    )


def checkpoint_policy(config: SweepConfig) -> CheckpointPolicy:
    """ASHA's rungs (where a trial may stop, or PASHA pauses it: that epoch must be kept) and
    max_t, and in between at most one checkpoint every `checkpoint_every_min`."""
    from carsweep.trainable.checkpoint import CheckpointPolicy

    return CheckpointPolicy(at_epochs=frozenset(config.rung_epochs()),
                            every_s=60.0 * config.checkpoint_every_min)


def new_tuner(config: SweepConfig, trainable: tune.Trainable, *, verbose: int = 1) -> tune.Tuner:
    """The sweep's Tuner around `trainable` (carsweep's trial, or a benchmark's stand-in)."""
    reporter = CompactReporter(config.metric, config.mode, list(config.searched()))
    searcher = _searcher_of(config, experiment_path(config))
    limit = config.max_concurrent_trials
    if config.scheduler == "pasha" and limit is not None:
        # Tune's own limit counts paused trials as running: PASHA's would fill it and wait.
        searcher, limit = PauseAwareLimiter(searcher, max_concurrent=limit), None
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(config),
            num_samples=config.num_samples,
            max_concurrent_trials=limit,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            reuse_actors=False,  # a fresh process per trial: its exit frees all GPU memory
        ),
        run_config=tune.RunConfig(
            name=config.name,
            **ray_storage(location(config.storage_path)),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=config.metric,
                checkpoint_score_order=config.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            callbacks=[LiveHParamsCallback(), DivergedTrialsCallback(reporter)],
            progress_reporter=reporter,
            verbose=verbose,
        ),
    )


def _searcher_of(config: SweepConfig, experiment: Path | BucketPath):
    """The searcher writing the study to the driver's file; for an experiment in a bucket, it
    also PUTs the study there before each snapshot of its state."""
    bucket = str(experiment) if is_bucket(experiment) else None
    return make_searcher(config, study_file=driver_study_file(experiment),
                         bucket_experiment=bucket)


def _trial_name(trial: tune.experiment.Trial) -> str:
    return trial_dir_name(trial.trial_id)
