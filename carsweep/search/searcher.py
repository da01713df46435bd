"""carsweep's searcher: Ray's OptunaSearch, told the truth about trials that ASHA stopped.

Stock OptunaSearch records a trial stopped at epoch 2 as COMPLETE with its epoch-2 score, so
TPE compares a 2-epoch score with full-length ones. Here every epoch's metric goes to the
Optuna trial as an intermediate value (step = epoch), and a trial that ended before its own
`epochs` (stopped by the scheduler, or cut at ASHA's max_t) is told as PRUNED; Optuna keeps
its intermediate values and TPE treats it as pruned. A trial that ran all its epochs is
COMPLETE with its final value; a trial that errored is FAIL.

A trial whose loss became NaN/inf (it reports `diverged`, see search/trial.py) is told so that
TPE ranks it below every other trial; `tell_diverged` says why it is told the way it is.
Suggestions reach Ray under the TrialConfig field names: a branch's study name (`lr|sgd`) is
mapped back to its field (`lr`), and `points_to_evaluate` go the other way.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from carsweep.config.sweep import DIVERGED, DIVERGED_MESSAGE, SweepConfig, field_values
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.search.space import DefineByRunSpace

logger = logging.getLogger(__name__)

EPOCH = "epoch"


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports per-epoch values and tells early-stopped trials as PRUNED."""

    def __init__(self, *args: Any, planned_epochs: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._default_epochs = planned_epochs
        self._planned: dict[str, int] = {}
        self._reported: dict[str, set[int]] = {}

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            config = field_values(config)
            self._planned[trial_id] = int(config.get("epochs", self._default_epochs))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        if (result or {}).get(DIVERGED):
            self._report(trial_id, result)  # the worst value, at the epoch it diverged in
            self._tell_diverged(ot_trial, result[DIVERGED_MESSAGE])
        elif error or value is None:
            # No final score: a crash is FAIL; a trial removed before it reported is PRUNED.
            state = TrialState.FAIL if error else TrialState.PRUNED
            self._tell(ot_trial, None, state)
        else:
            # Ray withholds the stopping result from on_trial_result; record it here.
            self._report(trial_id, result)
            if self._ran_all_epochs(trial_id, result):
                self._tell(ot_trial, value, TrialState.COMPLETE)
            else:
                self._tell(ot_trial, None, TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self.metric), result.get(EPOCH)
        reported = self._reported.setdefault(trial_id, set())
        if value is None or epoch is None or int(epoch) in reported:
            return
        self._ot_trials[trial_id].report(float(value), int(epoch))
        reported.add(int(epoch))

    def _ran_all_epochs(self, trial_id: str, result: dict) -> bool:
        planned = result.get("config/epochs") or (result.get("config") or {}).get("epochs")
        planned = int(planned or self._planned.get(trial_id, self._default_epochs))
        return int(result.get(EPOCH, 0)) >= planned

    def _tell(self, ot_trial: optuna.Trial, value: float | None, state: TrialState) -> None:
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN metric: Optuna refuses it
            logger.warning("Optuna refused trial %s as %s: %s", ot_trial.number, state.name, exc)

    def _tell_diverged(self, ot_trial: optuna.Trial, message: str) -> None:
        try:
            tell_diverged(self._ot_study, ot_trial, message)
        except (ValueError, RuntimeError) as exc:
            logger.warning("Optuna refused diverged trial %s: %s", ot_trial.number, exc)


def tell_diverged(study: optuna.Study, trial: optuna.Trial, message: str) -> None:
    """Tell `study` that `trial` diverged: PRUNED, infeasible, `diverged` = message.

    TPE splits the trials it has seen into a good and a bad group
    (optuna/samplers/_tpe/sampler.py, `_split_trials`): it fills the good group with COMPLETE
    trials by value first, then PRUNED trials by the last step they reported (deeper first),
    then infeasible trials (a constraint above 0). So neither state alone ranks a diverged
    trial last: COMPLETE with the worst value outranks every trial ASHA stopped, and PRUNED
    with the worst intermediate value, at epoch 5, outranks every trial stopped at epoch 3.
    A violated `diverged` constraint does: the trial goes to the good group only after every
    other trial, and `study.best_trial` never picks it. It is PRUNED because it did not run
    its epochs (its intermediate values, the worst last, are its record); FAIL would hide it
    from TPE altogether.
    """
    trial.set_user_attr(DIVERGED, message)
    trial.set_constraint(DIVERGED, 1.0)
    study.tell(trial, state=TrialState.PRUNED)


def make_sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped so conditional parameters are modelled together) or random."""
    seed = config.searcher.seed
    if config.searcher.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=config.searcher.n_startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,  # trials run in parallel: do not suggest the same point twice
        )


def make_searcher(config: SweepConfig, *, pruning_aware: bool = True) -> OptunaSearch:
    """The sweep's searcher; `pruning_aware=False` gives stock OptunaSearch (for comparisons)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress table says enough
    cls = PruningAwareOptunaSearch if pruning_aware else OptunaSearch
    default_epochs = TrialConfig.model_fields["epochs"].default  # epochs not in the space
    kwargs: dict[str, Any] = {"planned_epochs": default_epochs} if pruning_aware else {}
    return cls(
        space=DefineByRunSpace(config),
        metric=config.metric,
        mode=config.mode,
        points_to_evaluate=[config.searcher_point(p) for p in config.searcher.points_to_evaluate]
        or None,
        sampler=make_sampler(config),
        **kwargs,
    )


def load_study(experiment: Path) -> optuna.Study:
    """The Optuna study of a sweep, from the searcher state Ray saved in its folder."""
    states = sorted(Path(experiment).glob("searcher-state-*.pkl"))
    if not states:
        raise UserError(f"{experiment}: no searcher state (searcher-state-*.pkl) to read")
    with states[-1].open("rb") as handle:
        saved = pickle.load(handle)  # our own file, written by Ray in this experiment
    return saved["_ot_study"]
