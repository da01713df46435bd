"""analyze beyond one model: the sweep's top-K trials as an ensemble, and horizontal-flip TTA.

`--ensemble K` retrains the K best trials of the sweep (by its metric, best first; a trial that
diverged is never a member) on train+val, each once with its own seed, as jobs of the same
`Retrain` strategy as the best trial's `--seeds` (so on a cluster they all train at once), and
averages their test softmaxes: the ensemble's probability of a class is the mean of its members'.
Member 1 is the best trial's first retrain, the model analyze explains and exports.

`--tta` has every retrain also predict the test images mirrored left-right (retrain.py); a
model's TTA probability is the mean of its two softmaxes, an ensemble's the mean of its
members' TTA probabilities.

Each variant is a predictions table of its own (VARIANT_FILES), from which its metrics are
computed as predictions.csv's are: every number metrics.json holds can be recomputed from them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from carsweep.analysis import metrics
from carsweep.analysis.retrain import Retrained, RetrainJob, retrain_name, seeded
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import PreparedDataset
from carsweep.errors import UserError
from carsweep.results import BestTrial, Experiment, best_first
from carsweep.results.store import diverged

VARIANT_FILES = {"tta": "predictions_tta.csv", "ensemble": "predictions_ensemble.csv",
                 "ensemble_tta": "predictions_ensemble_tta.csv"}


def top_trials(experiment: Experiment, k: int) -> list[BestTrial]:
    """The k best trials that did not diverge, best first, each read as `Experiment.best` reads
    the best one (its checkpoint's config, else its parameters)."""
    if k < 1:
        raise UserError(f"--ensemble must be at least 1, got {k}")
    column, sweep = experiment.best_column, experiment.sweep
    scored = best_first(experiment.trials.dropna(subset=[column]), sweep.metric, sweep.mode)
    healthy = scored[~diverged(scored)]
    if k > 1 and len(healthy) < k:
        raise UserError(f"--ensemble {k}: the sweep has {len(healthy)} trial(s) with a result "
                        f"that did not diverge; give --ensemble {max(len(healthy), 1)} or less")
    if k == 1:
        return [experiment.best()]
    return [replace(experiment, trials=healthy.iloc[[rank]]).best() for rank in range(k)]


def retrain_jobs(trials: list[BestTrial], configs: list[TrialConfig], seeds: int,
                 tta: bool) -> list[RetrainJob]:
    """`seeds` retrains of the best trial's config (seeds seed .. seed+seeds-1), then one of
    each other member's with its own seed."""
    total = seeds + len(trials) - 1
    jobs = []
    for index in range(seeds):
        config = seeded(configs[0], index)
        jobs.append(RetrainJob(config, retrain_name(config, index, total), tta))
    for index, (trial, config) in enumerate(zip(trials[1:], configs[1:], strict=True), seeds):
        jobs.append(RetrainJob(config, retrain_name(config, index, total, trial.trial_id), tta))
    return jobs


def mean_probabilities(arrays: list[np.ndarray]) -> np.ndarray:
    """(N, C): the element-wise mean of (N, C) probability arrays."""
    return np.mean(np.stack(arrays), axis=0)


def variant_metrics(folder: Path, dataset: PreparedDataset, paths: list[str],
                    members: list[Retrained], tta: bool) -> dict[str, Any]:
    """metrics.json's `tta` and `ensemble` objects (the ensemble's own `tta` inside it), each
    variant's predictions table written to `folder`. `members[0]` is the best trial's first
    retrain; one member and no tta give {}."""
    def measured(name: str, probs: np.ndarray) -> dict[str, Any]:
        table = metrics.predictions_table(paths, members[0].labels, probs, dataset.classes)
        table.to_csv(folder / VARIANT_FILES[name], index=False)
        return metrics.test_metrics(table, dataset.num_classes)

    found: dict[str, Any] = {}
    if tta:
        found["tta"] = measured("tta", members[0].tta_probs)
    if len(members) > 1:
        ensemble = measured("ensemble", mean_probabilities([m.probs for m in members]))
        if tta:
            ensemble["tta"] = measured("ensemble_tta",
                                       mean_probabilities([m.tta_probs for m in members]))
        found["ensemble"] = ensemble
    return found


def members_json(trials: list[BestTrial], members: list[Retrained]) -> list[dict[str, Any]]:
    """Who is in the ensemble: trial id, its sweep value, the seed it was retrained with."""
    return [{"trial_id": trial.trial_id, "value": trial.value, "seed": member.config.seed,
             **member.placement.as_json()}
            for trial, member in zip(trials, members, strict=True)]
