"""PASHA as a Ray Tune scheduler: ASHA's promotions, with a maximum that grows only while the
ranking of the best trials keeps changing.

Bohdal, Balles, Wistuba, Ermis, Archambeau, Zappella (ICLR 2023), "PASHA: Efficient HPO and NAS
with Progressive Resource Allocation", https://openreview.net/forum?id=syfgJE6nFRW. Faithful to
the authors' code in Syne Tune v0.14.2 (`PASHARungSystem` on `PromotionRungSystem`), whose
rules are in pasha_rules.py:

- The rungs are ASHA's (grace * rf**k below max_t). A trial pauses at each rung it reaches
  (Ray checkpoints it and frees its slot); when a slot frees, the best paused trial that is in
  its rung's top 1/rf is resumed, from the highest rung down, before any new trial starts.
- Trials are promoted only from rungs below the current maximum. The maximum starts at the
  second level of the ladder (rungs, then max_t) and grows by one level whenever, after a
  report, the trials at the top rung are not ranked as at the rung below up to ε-groups; ε is
  re-estimated from every epoch's values at each report.
- A trial that reaches a rung and is itself the next promotion continues without a pause (the
  decision Syne Tune takes, without a restart). A trial that reaches max_t stops.

Where Ray differs from Syne Tune, and what is done:

- Paused trials: Tune's `max_concurrent_trials` counts them as running, so a sweep whose
  paused trials fill the limit would wait forever. The sweep's searcher is wrapped in
  `PauseAwareLimiter` instead, which this scheduler tells when a trial rests (paused, not about
  to resume) and when it is held again.
- The end: Syne Tune stops on a budget and leaves paused trials as they are. Here, once the
  searcher has made every trial and none runs or waits to, every paused trial is stopped; the
  ones paused at the final maximum are told to the searcher as finished (REACHED_FINAL_MAX),
  so Optuna records them COMPLETE with their value there, and the rest PRUNED.
- Fewer than three rungs: the authors' code assumes three or more. Here the maximum starts at
  the second level of the ladder all the same (one rung: at max_t, that is ASHA).
- A resumed sweep: Ray keeps no scheduler state, and requeues every unfinished trial as
  PENDING, so each trial of the sweep that ran before is read back as Ray adds it: its curve
  from its result.json (every epoch: ε needs them), its value at each rung it reached, as
  promoted from each rung it went past, and the maximum at least the level its furthest epoch
  needed (growths since seen only as reports come). A trial whose last epoch is a rung below
  max_t is paused there again, not run on: it was paused waiting for a promotion, or about to
  continue, and PASHA decides which when a slot frees, from the rungs rebuilt whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.utils import flatten_dict

from carsweep.results.store import ray_trial_rows
from carsweep.search.pasha_rules import epsilon, promotable, ranking_holds
from carsweep.search.searcher import REACHED_FINAL_MAX

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


@dataclass
class Rung:
    level: int
    values: dict[str, float] = field(default_factory=dict)  # trial id -> metric at `level`
    promoted: set[str] = field(default_factory=set)


class PashaScheduler(TrialScheduler):
    """PASHA over `rungs` (the epochs below `max_t` where trials pause: ASHA's)."""

    def __init__(self, *, metric: str, mode: str, rungs: list[int], max_t: int,
                 reduction_factor: float, epsilon_percentile: float = 90.0,
                 time_attr: str = "epoch"):
        super().__init__()
        self._metric, self._mode, self._time_attr = metric, mode, time_attr
        self._rungs = [Rung(level) for level in rungs]
        self._max_t, self._rf, self._percentile = max_t, reduction_factor, epsilon_percentile
        self._max_index = min(1, len(rungs))  # into ladder(): the second level
        self.epsilon = 0.0
        self.curves: dict[str, dict[int, float]] = {}  # every epoch's value: ε needs them
        self.growths: list[tuple[int, int]] = []  # (reports so far, new maximum)
        self._reports = 0
        self._milestone: dict[str, int] = {}
        self._to_resume: list[str] = []  # promoted while paused, waiting for their slot

    # The ladder -----------------------------------------------------------------------

    def ladder(self) -> list[int]:
        return [rung.level for rung in self._rungs] + [self._max_t]

    @property
    def current_max(self) -> int:
        return self.ladder()[self._max_index]

    def _next_level(self, epoch: int) -> int:
        return next(level for level in self.ladder() if level > epoch or level == self._max_t)

    # Ray's hooks ----------------------------------------------------------------------

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # set in the constructor, from the sweep

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        epoch = int((trial.last_result or {}).get(self._time_attr, 0))
        self._milestone[trial.trial_id] = self._next_level(epoch)
        if epoch:  # a trial of a resumed sweep
            self._take_back(tune_controller, trial, epoch)

    def _take_back(self, tune_controller: TuneController, trial: Trial, epoch: int) -> None:
        """What a trial of a resumed sweep did before (the module docstring says why)."""
        trial_id = trial.trial_id
        curve = self._recorded_curve(trial)
        self.curves[trial_id] = curve
        for rung in self._rungs:
            if rung.level in curve and rung.level <= epoch:
                rung.values[trial_id] = curve[rung.level]
            if rung.level < epoch:
                rung.promoted.add(trial_id)
        self._max_index = max(self._max_index, self.ladder().index(self._next_level(epoch - 1)))
        resting = epoch in {rung.level for rung in self._rungs}
        if resting and trial.status == Trial.PENDING:  # not one that ended
            trial.set_status(Trial.PAUSED)  # before Ray files it under its status
            _limiter(tune_controller, "rest", trial_id)

    def _recorded_curve(self, trial: Trial) -> dict[int, float]:
        """epoch -> metric from the trial's result.json (an epoch trained twice: its last)."""
        return {int(row[self._time_attr]): float(row[self._metric])
                for row in ray_trial_rows(trial, self._time_attr, self._metric)}

    def on_trial_result(self, tune_controller: TuneController, trial: Trial,
                        result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        trial_id, epoch = trial.trial_id, int(result[self._time_attr])
        if trial_id in self._to_resume:  # it runs again (choose_trial_to_run must not pop it)
            self._to_resume.remove(trial_id)
        self.curves.setdefault(trial_id, {})[epoch] = float(result[self._metric])
        milestone = self._milestone.get(trial_id, self._next_level(epoch - 1))
        at_rung = milestone < self._max_t and epoch >= milestone
        if at_rung:
            self._rung_at(milestone).values[trial_id] = float(result[self._metric])
        self._grow_if_ranking_changed()  # before the promotion it may allow (Syne Tune's order)
        if epoch >= self._max_t:
            return TrialScheduler.STOP
        return self._at_rung(tune_controller, trial_id) if at_rung else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial,
                          result: dict) -> None:
        self._forget(trial.trial_id)
        self._give_slot(tune_controller)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        self.on_trial_complete(tune_controller, trial, {})

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self._forget(trial.trial_id)

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        trials = tune_controller.get_trials()
        by_id = {trial.trial_id: trial for trial in trials}
        self._to_resume = [t for t in self._to_resume
                           if t in by_id and by_id[t].status == Trial.PAUSED]
        if self._to_resume:
            return by_id[self._to_resume[0]]
        pending = next((trial for trial in trials if trial.status == Trial.PENDING), None)
        busy = pending or any(trial.status == Trial.RUNNING for trial in trials)
        if busy:
            return pending
        if self._give_slot(tune_controller):  # nothing runs: a slot is free
            return by_id[self._to_resume[0]]
        if tune_controller.search_alg.is_finished():
            self._end(tune_controller, [t for t in trials if t.status == Trial.PAUSED])
        return None

    def debug_string(self) -> str:
        sizes = ", ".join(f"{rung.level}: {len(rung.values)}" for rung in self._rungs)
        return (f"PASHA: maximum {self.current_max} of {self._max_t} epochs, "
                f"ε {self.epsilon:.4g}; trials per rung {sizes}")

    # Promotions -----------------------------------------------------------------------

    def _rung_at(self, level: int) -> Rung:
        return next(rung for rung in self._rungs if rung.level == level)

    def next_promotion(self) -> tuple[str, Rung] | None:
        """The paused trial a free slot resumes: from the highest rung below the current
        maximum down, the first rung's promotable trial."""
        for rung in reversed(self._rungs):
            if rung.level >= self.current_max:
                continue
            trial_id = promotable(rung.values, rung.promoted, self._rf, self._mode)
            if trial_id is not None:
                return trial_id, rung
        return None

    def _promote(self, trial_id: str, rung: Rung) -> None:
        rung.promoted.add(trial_id)
        self._milestone[trial_id] = self._next_level(rung.level)

    def _at_rung(self, tune_controller: TuneController, trial_id: str) -> str:
        """Pause the trial at its rung; its slot goes to the next promotion (itself: it
        continues) or, with none, to a new trial."""
        found = self.next_promotion()
        if found is not None and found[0] == trial_id:
            self._promote(*found)
            return TrialScheduler.CONTINUE
        _limiter(tune_controller, "rest", trial_id)
        self._give_slot(tune_controller)
        return TrialScheduler.PAUSE

    def _give_slot(self, tune_controller: TuneController) -> bool:
        """A slot is free: hand it to the next promotion, if there is one."""
        found = self.next_promotion()
        if found is None:
            return False
        self._promote(*found)
        self._to_resume.append(found[0])
        _limiter(tune_controller, "hold", found[0])
        return True

    def _forget(self, trial_id: str) -> None:
        self._milestone.pop(trial_id, None)
        if trial_id in self._to_resume:
            self._to_resume.remove(trial_id)

    # The maximum ----------------------------------------------------------------------

    def top_two_rungs(self) -> tuple[Rung, Rung] | None:
        """The rung at the current maximum (the highest rung once the maximum is max_t) and
        the one below it; None with fewer than two rungs."""
        top = min(self._max_index, len(self._rungs) - 1)
        return (self._rungs[top], self._rungs[top - 1]) if top >= 1 else None

    def _grow_if_ranking_changed(self) -> None:
        self._reports += 1
        rungs = self.top_two_rungs()
        if rungs is None:
            return
        top, below = rungs
        latest = max((max(curve) for curve in self.curves.values()), default=0)
        estimate = epsilon(self.curves, min(latest, top.level), min(below.level, latest),
                           self._percentile)
        if estimate is not None:
            self.epsilon = estimate
        changed = top.values and not ranking_holds(top.values, below.values, self.epsilon,
                                                   self._mode)
        if changed and self._max_index < len(self._rungs):
            self._max_index += 1
            self.growths.append((self._reports, self.current_max))

    # The end --------------------------------------------------------------------------

    def _end(self, tune_controller: TuneController, paused: list[Trial]) -> None:
        """Every trial is made and none runs: stop the paused ones, telling the searcher which
        reached the final maximum (COMPLETE there) before Ray tells it they ended."""
        at_max = self._rung_at(self.current_max).values if self.current_max < self._max_t \
            else {}
        for trial in paused:
            result = flatten_dict(trial.last_result or {})
            if trial.trial_id in at_max:
                result[REACHED_FINAL_MAX] = True
            tune_controller.search_alg.on_trial_complete(trial.trial_id, result=result)
            tune_controller.stop_trial(trial)


class PauseAwareLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter, counting a paused trial only while it is about to resume:
    PASHA tells it (`rest`, `hold`), through the Tune controller's searcher."""

    def __init__(self, searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.resting: set[str] = set()

    def rest(self, trial_id: str) -> None:
        self.resting.add(trial_id)

    def hold(self, trial_id: str) -> None:
        self.resting.discard(trial_id)

    def suggest(self, trial_id: str):
        if len(self.live_trials - self.resting) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, self.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.resting.discard(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)


def _limiter(tune_controller: TuneController, action: str, trial_id: str) -> None:
    """Tell the sweep's PauseAwareLimiter, where there is one, that a trial rests or is held."""
    searcher = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
    if isinstance(searcher, PauseAwareLimiter):
        getattr(searcher, action)(trial_id)
