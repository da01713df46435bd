"""`scheduler: median`: Ray's MedianStoppingRule (Golovin et al. 2017, "Google Vizier: A Service
for Black-Box Optimization", section 3.2.2), per epoch, as carsweep runs it.

From `median.grace_period` epochs on, a trial whose best metric so far is worse than the median
of the other trials' running averages (their mean from the grace period up to this epoch) stops
for good. On the replay of recorded fine-tuning curves it was the most accurate stopping rule on
both recordings, at about twice ASHA's GPU-seconds (BENCHMARKS.md).

Two things differ from Ray's defaults:
- it never pauses a trial to let another run ("time slicing": Ray pauses a trial that cannot
  be compared yet while others wait): a carsweep trial's pause is a new process and a
  checkpoint load, and a sweep whose slots are full has trials waiting most of the time;
- on `resume`, Ray starts a new scheduler with no results, so the finished trials would no
  longer count in the median: each trial Ray adds brings back the epochs its result.json holds
  (an epoch trained again after the checkpoint it resumed from counts once, at its last value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray.tune.experiment import Trial
from ray.tune.schedulers import MedianStoppingRule

from carsweep.results.store import ray_trial_rows

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

NEVER = float("inf")


class MedianStopping(MedianStoppingRule):
    def __init__(self, *, metric: str, mode: str, grace_period: int,
                 min_samples_required: int) -> None:
        super().__init__(time_attr="epoch", metric=metric, mode=mode, grace_period=grace_period,
                         min_samples_required=min_samples_required, min_time_slice=NEVER)

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if (trial.last_result or {}).get(self._time_attr):  # a trial of a resumed sweep
            self._results[trial] = ray_trial_rows(trial, self._time_attr, self._metric)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial,
                        result: dict) -> str:
        # A trial resumed from a checkpoint trains the epochs after it again: its last value
        # of an epoch counts, once.
        if trial in self._results and self._time_attr in result:
            self._results[trial] = [row for row in self._results[trial]
                                    if row[self._time_attr] != result[self._time_attr]]
        return super().on_trial_result(tune_controller, trial, result)
