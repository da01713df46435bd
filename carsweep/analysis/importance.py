"""Hyperparameter importance over the sweep's own Optuna study, as Optuna computes it.

The study (carsweep/results/study.py) holds every trial as the searcher told it: COMPLETE at
its final value for a trial that ran all its epochs, PRUNED (with its per-epoch values) for one
ASHA stopped, PRUNED and infeasible for one that diverged. Optuna's importance evaluators read
COMPLETE trials only (`states=(TrialState.COMPLETE,)` in optuna/importance/_base.py and
_ped_anova/evaluator.py): a score reached by epoch 1 of a trial ASHA stopped is not compared
with scores after all the epochs. So the importance rests on the complete trials, and the
report says how many, and how many stopped trials it leaves out. Counting a stopped trial as
complete at the best value it reached, as carsweep did when it rebuilt a study from trials.csv,
ranks the parameters that make a trial good early, which can differ from those that make it
good at the end (tests/test_importance.py builds a sweep where the ranking flips).

PED-ANOVA (Watanabe et al. 2023, https://arxiv.org/abs/2304.10255) is the evaluator: it needs
no scikit-learn (fANOVA and MDI do), handles conditional parameters (momentum for sgd only; a
branch per optimizer, `lr|sgd`, as in the study) and is what optuna-dashboard shows. It says
which parameters matter for reaching the top `quantile` of trials; with a handful of trials it
is a hint, not a measurement.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

MIN_TRIALS = 3  # complete trials; below this there is nothing to compare
EVALUATOR = "PedAnovaImportanceEvaluator"


def importance_evaluator(complete_trials: int) -> optuna.importance.PedAnovaImportanceEvaluator:
    """PED-ANOVA whose top quantile holds at least two trials (it needs two to see a
    difference) and at most half of them."""
    return optuna.importance.PedAnovaImportanceEvaluator(
        target_quantile=quantile(complete_trials))


def quantile(complete_trials: int) -> float:
    return min(0.5, max(0.1, 2 / max(complete_trials, 1)))


def param_importances(study: optuna.Study) -> dict[str, Any]:
    """{"evaluator", "complete_trials", "stopped_trials", "importances": {name: share}} and
    "target_quantile", or a "skipped" reason."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    stopped = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    base = {"evaluator": EVALUATOR, "complete_trials": len(complete),
            "stopped_trials": len(stopped), "importances": {}}
    if not any(trial.distributions for trial in study.get_trials(deepcopy=False)):
        return base | {"skipped": "the sweep searched no parameter"}
    if len(complete) < MIN_TRIALS:
        return base | {"skipped": f"{len(complete)} trial(s) ran all their epochs; importance "
                                  f"needs at least {MIN_TRIALS}"}
    if len({trial.value for trial in complete}) < 2:
        return base | {"skipped": "every complete trial has the same value"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and few-trials warnings
        importances = optuna.importance.get_param_importances(
            study, evaluator=importance_evaluator(len(complete)))
    return base | {"target_quantile": quantile(len(complete)),
                   "importances": {k: float(v) for k, v in importances.items()}}
