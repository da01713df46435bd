"""Hyperparameter importance over a sweep's trials, with Optuna's importance evaluators.

The sweep's own study lives pickled inside Ray's searcher state; reading it needs Ray. Instead
an in-memory study is rebuilt from the trials table (`config/<name>` columns) with
`optuna.trial.create_trial` and the distributions of the sweep's space, so the analysis reads
only the experiment folder. Every trial with a result counts with its best value of the
sweep's metric; a trial ASHA stopped early counts with the best it reached before the stop,
which is what the sweep ranked it by. A branched field (a range per optimizer) is one parameter
per branch, named as in the sweep's study (`lr|sgd`), each trial counted under the branch its
parent's value selected.

PED-ANOVA (Watanabe et al. 2023, https://arxiv.org/abs/2304.10255) is the evaluator: it needs
no scikit-learn (fANOVA and MDI do) and is what Optuna Dashboard uses. It says which
parameters matter for reaching the top `quantile` of trials; with a handful of trials that is
a hint, not a measurement, and the report says how many trials it rests on.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from carsweep.config.sweep import ParamSpec, SweepConfig

CONFIG_PREFIX = "config/"
MIN_TRIALS = 3  # below this there is nothing to compare


def distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution a searched parameter was drawn from (as search/space.py does)."""
    if spec.kind == "choice":
        return CategoricalDistribution(spec.values)
    low, high = spec.values
    if spec.kind == "int":
        return IntDistribution(int(low), int(high), log=spec.log)
    return FloatDistribution(float(low), float(high), log=spec.kind == "loguniform")


def study_from_trials(trials: pd.DataFrame, sweep: SweepConfig) -> optuna.Study:
    """An in-memory study: one COMPLETE trial per row that has a value of the metric."""
    column = f"best_{sweep.metric}"
    searched = [param for param in sweep.parameters() if param.spec.searched]  # parents first
    distributions = {param.name: distribution(param.spec) for param in searched}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    for _, row in trials.dropna(subset=[column]).iterrows():
        params, fields = {}, dict(sweep.fixed())
        for param in searched:
            if not param.applies(fields):
                continue  # another branch's trial, or a field its parent's value leaves out
            value = _param_value(row.get(CONFIG_PREFIX + param.field), distributions[param.name])
            if value is not None:
                params[param.name] = fields[param.field] = value
        used = {name: distributions[name] for name in params}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=used, value=float(row[column]),
            user_attrs={"trial_id": str(row["trial_id"])}))
    return study


def param_importances(trials: pd.DataFrame, sweep: SweepConfig) -> dict[str, Any]:
    """{"evaluator", "trials", "importances": {name: share}} or a "skipped" reason."""
    study = study_from_trials(trials, sweep)
    count = len(study.trials)
    base = {"evaluator": "PedAnovaImportanceEvaluator", "trials": count, "importances": {}}
    if not sweep.searched():
        return base | {"skipped": "the sweep searched no parameter"}
    if count < MIN_TRIALS:
        return base | {"skipped": f"{count} trial(s) with a result; importance needs "
                                  f"at least {MIN_TRIALS}"}
    if len({t.value for t in study.trials}) < 2:
        return base | {"skipped": "every trial has the same value"}
    # The top quantile must hold at least two trials for PED-ANOVA to see a difference.
    quantile = min(0.5, max(0.1, 2 / count))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and few-trials warnings
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return base | {"target_quantile": quantile,
                   "importances": {k: float(v) for k, v in importances.items()}}


def _param_value(raw: Any, dist: BaseDistribution) -> Any:
    """The trials table's cell as a value of `dist`, or None where the parameter was unused.

    A CSV round trip turns 16 into 16.0 or "16" and True into "True"; a categorical value is
    matched to its choice by its text, numbers are cast to the distribution's type."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw == "":
        return None
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if choice == raw or str(choice) == str(raw) or _same_number(choice, raw):
                return choice
        return None
    value = int(float(raw)) if isinstance(dist, IntDistribution) else float(raw)
    return value if dist.low <= value <= dist.high else None


def _same_number(a: Any, b: Any) -> bool:
    try:
        return not isinstance(a, bool) and float(a) == float(b)
    except (TypeError, ValueError):
        return False
