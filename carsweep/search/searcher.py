"""carsweep's searcher: Ray's OptunaSearch, told the truth about trials that ASHA stopped.

Stock OptunaSearch records a trial stopped at epoch 2 as COMPLETE with its epoch-2 score, so
TPE compares a 2-epoch score with full-length ones. Here every epoch's metric goes to the
Optuna trial as an intermediate value (step = epoch), and a trial that ended before its own
`epochs` (stopped by the scheduler, or cut at ASHA's max_t) is told as PRUNED; Optuna keeps
its intermediate values and TPE treats it as pruned. A trial that ran all its epochs is
COMPLETE with its final value; a trial that errored is FAIL. Under PASHA (search/pasha.py) a
trial that reached the scheduler's final maximum is COMPLETE with its value there, even when
that maximum is below its `epochs`: the sweep trained no trial further, so these are its
finished trials (importance and the sweep plots read COMPLETE ones). A pause is no end: Ray
tells the searcher its result like any other epoch's, and nothing else.

A trial whose loss became NaN/inf (it reports `diverged`, see search/trial.py) is told so that
TPE ranks it below every other trial; `tell_diverged` says why it is told the way it is.
Suggestions reach Ray under the TrialConfig field names: a branch's study name (`lr|sgd`) is
mapped back to its field (`lr`), and `points_to_evaluate` go the other way.

The study is written, as the trials report, to the experiment folder's study file
(carsweep/results/study.py says why a journal file): every read of a sweep reads it there. Each
study trial is labelled with its Ray trial's id. Every write first reads the trial's state in
the storage, so nothing is written to a trial that has ended (a resumed sweep reruns trials
whose end the study already has), and an epoch reported twice keeps its last value. Ray pickles
the searcher (tuner.pkl, and snapshots for resume): the pickle names the study trial of each
Ray trial and the study is opened again from its file; see `__getstate__`.

An experiment in a bucket (`bucket_experiment`): the study is written to the driver's own
disk (an object cannot be appended to), and `save` PUTs it into the bucket itself, whole,
before it writes the searcher's state into the folder Tune uploads. Tune's upload of that
folder is not one snapshot: it copies the files one after another, in the background, while
the driver goes on saving over them; a study in that folder could reach the bucket older than
the state beside it (a state naming study trials the study lacks cannot be resumed). Put
first, the study in the bucket is never older than the searcher's state there. Tune's own
state is written before the searcher's, so a killed driver can still leave a Tune state that
has a trial TERMINATED beside a study from before its end, and a Tune state older than the
trial's result.json: before a resume runs anything, `tell_ends` gives the study the end of
every trial that has ended (search/tuner.py says how that is known). Tune's state and the
searcher's can also be from different saves: a resume gives each trial of Tune's state the
study trial labelled with its id, whatever the searcher's state says (`_reopen_study`). The
pickle names the experiment, not a path of the old head: unpickled on another machine (a
resume on a new head, which downloads the study first), it opens that machine's copy.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from carsweep.config.files import STUDY_NAME
from carsweep.config.space import field_values
from carsweep.config.sweep import DIVERGED, DIVERGED_MESSAGE, SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.results.study import (
    TRIAL_ID_ATTR,
    driver_study_file,
    journal_storage,
    study_path,
)
from carsweep.search.space import DefineByRunSpace
from carsweep.storage import BucketPath, StorageError, is_bucket, location

logger = logging.getLogger(__name__)

EPOCH = "epoch"
# Set by PASHA in the last result of a trial it stopped at its final maximum (search/pasha.py).
REACHED_FINAL_MAX = "reached_final_max"


# Where the experiment being resumed is now, while Tune unpickles its searcher: the pickles
# name the study file where the sweep ran, and an experiment moved or copied since (another
# folder, a new head node) must open its own study, not the old place's, which may be gone.
# And the Ray trials of Tune's saved state, which can be from another save than the searcher's
# (see `_reopen_study`).
_resumed_experiment: Path | BucketPath | None = None
_resumed_trials: frozenset[str] | None = None


@contextmanager
def searcher_resumed_in(experiment: Path | BucketPath,
                        saved_trials: Iterable[str] | None = None) -> Iterator[None]:
    """Within this block, a searcher unpickled opens `experiment`'s study; given the Ray
    trials Tune's saved state has (a resume), it gives each its own study trial."""
    global _resumed_experiment, _resumed_trials  # noqa: PLW0603 - read by __setstate__
    _resumed_experiment = experiment
    _resumed_trials = None if saved_trials is None else frozenset(saved_trials)
    try:
        yield
    finally:
        _resumed_experiment, _resumed_trials = None, None


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports per-epoch values and tells early-stopped trials as PRUNED,
    writing its study to `study_file` (results/study.py) when one is given."""

    def __init__(self, *args: Any, planned_epochs: int = 1, study_file: Path | None = None,
                 bucket_experiment: str | None = None, **kwargs: Any):
        self._study_file = str(study_file) if study_file is not None else None
        self._bucket_experiment = bucket_experiment
        storage = journal_storage(study_file) if study_file is not None else None
        super().__init__(*args, storage=storage, study_name=STUDY_NAME, **kwargs)
        self._default_epochs = planned_epochs
        self._planned: dict[str, int] = {}
        self._lost: list[int] = []  # study trials whose Ray trial died with the driver
        with warnings.catch_warnings():  # "experimental"; the dashboard names the value so
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self.metric])

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._lost:
            # The study trial of a Ray trial created after Ray's last snapshot: Ray replaces it
            # with a new trial, which gets its study trial (and so its parameters) back.
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, self._lost.pop(0))
        config = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
            config = field_values(config)
            self._planned[trial_id] = int(config.get("epochs", self._default_epochs))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._is_over(trial_id):
            return
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if self._is_over(trial_id):
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
            if self._ran_all_epochs(trial_id, result) or result.get(REACHED_FINAL_MAX):
                self._tell(ot_trial, value, TrialState.COMPLETE)
            else:
                self._tell(ot_trial, None, TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def tell_ends(self, ended: dict[str, dict]) -> list[str]:
        """Before a resume: `ended` maps each trial known to have ended (search/tuner.py,
        `tell_study_the_known_ends`) to its last result. Where the study has such a trial
        still unfinished, its end is told now from that result, as `on_trial_complete` would
        have told it; an end the study has stays. The study can lack the end where it is
        older than Tune's state or the trial's folder, which Tune's upload to a bucket allows
        (see the module docstring). Returns the ids told."""
        numbers = self._study_trial_of_each_ray_trial()
        told = []
        for trial_id, result in ended.items():
            if trial_id not in numbers:
                continue  # no study trial to end: Ray created it after the study's copy
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, numbers[trial_id])
            if not self._is_over(trial_id):
                self.on_trial_complete(trial_id, result)
                told.append(trial_id)
        return told

    def _is_over(self, trial_id: str) -> bool:
        """Unknown, or already told its end (here, or before a driver died and was resumed:
        the study keeps the first end it was told)."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return True
        ot_trial = self._ot_trials[trial_id]
        return ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished()

    def _report(self, trial_id: str, result: dict) -> None:
        """The epoch's metric as the trial's intermediate value at step = epoch. An epoch
        reported again (a trial restarted from an older checkpoint) keeps its last value, as
        the trial's history does (results.Experiment.history)."""
        value, epoch = result.get(self.metric), result.get(EPOCH)
        if value is None or epoch is None:
            return
        ot_trial = self._ot_trials[trial_id]
        storage, number = ot_trial.storage, ot_trial._trial_id
        if storage.get_trial(number).intermediate_values.get(int(epoch)) != float(value):
            storage.set_trial_intermediate_value(number, int(epoch), float(value))

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

    # Ray pickles the searcher twice: whole in tuner.pkl, and with `save` in its periodic
    # snapshot (searcher-state-*.pkl). With a study file the pickle holds no study: only which
    # study trial each Ray trial has; unpickling opens the study file again, so there is one
    # study per experiment, and it is the file's, which is newer than any snapshot.

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._study_file is not None:
            state.update(_ot_study=None, _storage=None,
                         _ot_trials={tid: t._trial_id for tid, t in self._ot_trials.items()})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        defaults = {"_study_file": None, "_lost": [], "_bucket_experiment": None}
        self.__dict__.update(defaults | state)  # no study file: in memory
        if self._study_file is not None and _resumed_experiment is not None:
            self._study_file = str(driver_study_file(_resumed_experiment))
            if is_bucket(_resumed_experiment):
                self._bucket_experiment = str(_resumed_experiment)
        elif self._bucket_experiment is not None:  # this machine's copy of the study
            self._study_file = str(driver_study_file(location(self._bucket_experiment)))
        if self._study_file is not None:
            self._reopen_study(state["_ot_trials"])

    def save(self, checkpoint_path: str) -> None:
        if self._bucket_experiment is not None and not self._upload_study():
            return  # no state newer than the study in the bucket: Tune keeps the last one
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def _upload_study(self) -> bool:
        """The study, PUT into the bucket before the state that names its trials is written:
        Tune uploads that state later, in the background, so the bucket never holds a state
        newer than its study. A bucket that cannot be written now is said in the log and the
        sweep goes on (Tune's own upload meets the same bucket and says so too)."""
        try:
            study_path(location(self._bucket_experiment)).write_bytes(
                Path(self._study_file).read_bytes())
        except StorageError as error:
            logger.warning("study not uploaded, the searcher's state in the bucket stays as "
                           "it was: %s", error)
            return False
        return True

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__setstate__(pickle.load(handle))  # our own file, written by save() above

    def _reopen_study(self, known: dict[str, int]) -> None:
        """The study from its file, each Ray trial of the snapshot given its study trial; a
        study trial asked for after the snapshot (its Ray trial unknown to a resume) is kept
        for the next trial Ray creates. Its intermediate values from the lost run stay until
        the new trial reports the same epochs: the limit of a snapshot that lags.

        In a resume, the Ray trials are those of Tune's saved state, and each gets the study
        trial labelled with its id: Tune's state and the searcher's reach a bucket as separate
        files, possibly from different saves (module docstring), so the searcher's can lack a
        trial Tune resumes (whose results would be dropped, its study trial handed to a new
        trial) or name one Tune never runs again (whose study trial would stay RUNNING)."""
        self._storage = journal_storage(Path(self._study_file))
        self._ot_study = optuna.load_study(study_name=STUDY_NAME, storage=self._storage,
                                           sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        if _resumed_trials is not None:
            known = {tid: number
                     for tid, number in (known | self._study_trial_of_each_ray_trial()).items()
                     if tid in _resumed_trials}
        self._ot_trials = {tid: optuna.Trial(self._ot_study, number)
                           for tid, number in known.items()}
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        self._lost = sorted(t._trial_id for t in running if t._trial_id not in known.values())

    def _study_trial_of_each_ray_trial(self) -> dict[str, int]:
        """Ray trial id -> the number of the study trial labelled with it."""
        return {str(t.user_attrs[TRIAL_ID_ATTR]): t._trial_id
                for t in self._ot_study.get_trials(deepcopy=False)
                if TRIAL_ID_ATTR in t.user_attrs}


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


def make_searcher(config: SweepConfig, *, pruning_aware: bool = True,
                  study_file: Path | None = None,
                  bucket_experiment: str | None = None) -> OptunaSearch:
    """The sweep's searcher, writing its study to `study_file` (in memory without one), and
    PUTting it before each snapshot for an experiment in a bucket (its URI);
    `pruning_aware=False` gives stock OptunaSearch (for comparisons)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress table says enough
    cls = PruningAwareOptunaSearch if pruning_aware else OptunaSearch
    default_epochs = TrialConfig.model_fields["epochs"].default  # epochs not in the space
    kwargs: dict[str, Any] = {"planned_epochs": default_epochs, "study_file": study_file,
                              "bucket_experiment": bucket_experiment} if pruning_aware else {}
    return cls(
        space=DefineByRunSpace(config),
        metric=config.metric,
        mode=config.mode,
        points_to_evaluate=[config.searcher_point(p) for p in config.searcher.points_to_evaluate]
        or None,
        sampler=make_sampler(config),
        **kwargs,
    )
