"""Hyperparameter importance on the sweep's real study, and the sweep plots Optuna draws of it.

The constructed sweep: a trial's early scores depend on its learning rate alone (a high lr
learns fast), its final score on its weight decay alone. ASHA stopped most trials early. Read
as the searcher recorded it (stopped trials PRUNED), Optuna's evaluator compares the trials
that ran all their epochs and finds weight decay; counting each stopped trial as complete at
the best score it reached (what carsweep did before it kept the study) finds the lr instead.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from carsweep.analysis.importance import importance_evaluator, param_importances
from carsweep.analysis.sweep_plots import sweep_plots

DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True),
                 "weight_decay": FloatDistribution(1e-6, 1e-2, log=True)}
COMPLETE, STOPPED = 12, 18


def constructed_sweep() -> optuna.Study:
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    for index in range(COMPLETE + STOPPED):
        fast, decay = rng.uniform(size=2)  # where lr and weight decay lie in their ranges
        params = {"lr": 1e-4 * 1000 ** fast, "weight_decay": 1e-6 * 1e4 ** decay}
        early = [0.3 + 0.3 * fast, 0.3 + 0.7 * fast]  # epochs 1 and 2
        if index < COMPLETE:  # ran its 8 epochs: the final score is the weight decay's doing
            final = 0.6 + 0.3 * decay
            steps = dict(enumerate([*early, *np.linspace(early[-1], final, 7)[1:]], start=1))
            trial = create_trial(params=params, distributions=DISTRIBUTIONS, value=final,
                                 intermediate_values=steps)
        else:  # stopped by ASHA at epoch 2
            trial = create_trial(params=params, distributions=DISTRIBUTIONS,
                                 state=TrialState.PRUNED,
                                 intermediate_values=dict(enumerate(early, start=1)))
        study.add_trial(trial)
    return study


def counted_complete_at_their_best(study: optuna.Study) -> optuna.Study:
    """The study as carsweep rebuilt it from trials.csv before it kept the real one."""
    rebuilt = optuna.create_study(direction="maximize")
    for trial in study.trials:
        rebuilt.add_trial(create_trial(params=trial.params, distributions=trial.distributions,
                                       value=max(trial.intermediate_values.values())))
    return rebuilt


def ranking(importances: dict[str, float]) -> list[str]:
    return sorted(importances, key=importances.get, reverse=True)


def test_importance_on_the_real_study_ranks_what_decides_the_final_score():
    study = constructed_sweep()
    found = param_importances(study)
    assert (found["complete_trials"], found["stopped_trials"]) == (COMPLETE, STOPPED)
    assert ranking(found["importances"]) == ["weight_decay", "lr"]
    assert found["importances"]["weight_decay"] > 0.8

    # The same trials with every stopped one counted complete at its best: the ranking flips.
    lie = counted_complete_at_their_best(study)
    flipped = optuna.importance.get_param_importances(
        lie, evaluator=importance_evaluator(len(lie.trials)))
    assert ranking(flipped) == ["lr", "weight_decay"]


def test_importance_is_skipped_below_three_complete_trials_and_says_why():
    study = constructed_sweep()
    few = optuna.create_study(direction="maximize")
    few.add_trials([t for t in study.trials if t.state == TrialState.PRUNED] + study.trials[:2])
    found = param_importances(few)
    assert found["importances"] == {}
    assert found["skipped"] == "2 trial(s) ran all their epochs; importance needs at least 3"
    assert (found["complete_trials"], found["stopped_trials"]) == (2, STOPPED)


def test_every_sweep_plot_is_optunas_and_drawn_from_the_study(tmp_path):
    study = constructed_sweep()
    found = param_importances(study)
    drawn = sweep_plots(study, tmp_path, rungs=[2, 4], importances=found["importances"])
    assert [path.name for path in drawn] == [
        "optimization_history.png", "intermediate_values.png", "slice.png",
        "parallel_coordinate.png", "importance.png"]
    assert all(path.stat().st_size > 10_000 for path in drawn)  # a picture, not an empty axes

    stopped_only = optuna.create_study(direction="maximize")
    stopped_only.add_trials([t for t in study.trials if t.state == TrialState.PRUNED])
    (tmp_path / "stopped").mkdir()
    drawn = sweep_plots(stopped_only, tmp_path / "stopped", rungs=[2], importances={})
    assert [path.name for path in drawn] == ["intermediate_values.png"]  # the only one with data
