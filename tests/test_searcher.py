"""carsweep's searcher tells Optuna the truth: per-epoch values, PRUNED for early stops.

Driven like Ray drives it (suggest, on_trial_result per epoch, on_trial_complete), with an
in-memory Optuna study and fake results, as Ray's own searcher tests do.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.search.optuna import OptunaSearch

from carsweep.config.sweep import SweepConfig
from carsweep.search.searcher import PruningAwareOptunaSearch, make_searcher, tell_diverged
from carsweep.search.tuner import make_scheduler

CONFIG = SweepConfig.model_validate({
    "space": {"lr": {"loguniform": [1e-3, 0.1]}, "optimizer": {"choice": ["sgd", "adam"]},
              "momentum": {"uniform": [0.8, 0.9]}, "epochs": 4},
    "searcher": {"seed": 3, "n_startup_trials": 2, "points_to_evaluate": [{"lr": 0.05}]},
})


def run_fake_trial(searcher, trial_id, epochs_run, *, stopped, error=False):
    config = searcher.suggest(trial_id)
    results = [{"epoch": e, "val_top1": 0.1 * e, "training_iteration": e,
                "config/epochs": config["epochs"]} for e in range(1, epochs_run + 1)]
    # Ray withholds the result that made the scheduler stop a trial from on_trial_result.
    shown = results[:-1] if stopped else results
    for result in shown:
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result=None if error else results[-1], error=error)
    return config


def test_first_point_to_evaluate_is_used():
    searcher = make_searcher(CONFIG)
    assert searcher.suggest("t0")["lr"] == 0.05


def test_scheduler_stop_is_pruned_with_every_epoch_kept():
    searcher = make_searcher(CONFIG)
    run_fake_trial(searcher, "stopped", 2, stopped=True)
    run_fake_trial(searcher, "finished", 4, stopped=False)
    run_fake_trial(searcher, "crashed", 1, stopped=False, error=True)
    stopped, finished, crashed = searcher.study.trials
    assert stopped.state == TrialState.PRUNED
    assert stopped.intermediate_values == {1: 0.1, 2: 0.2}
    assert finished.state == TrialState.COMPLETE
    assert finished.value == 0.4
    assert finished.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.30000000000000004, 4: 0.4}
    assert crashed.state == TrialState.FAIL


def test_trial_cut_at_max_t_below_its_epochs_is_pruned():
    config = CONFIG.model_copy(update={"asha": CONFIG.asha.model_copy(update={"max_t": 2})})
    searcher = make_searcher(config)
    run_fake_trial(searcher, "cut", 2, stopped=True)
    assert searcher.study.trials[0].state == TrialState.PRUNED


def test_stock_optuna_search_calls_the_same_stop_complete():
    # The blind spot this searcher fixes: stock OptunaSearch records the stop as COMPLETE.
    stock = make_searcher(CONFIG, pruning_aware=False)
    assert type(stock) is OptunaSearch
    run_fake_trial(stock, "stopped", 2, stopped=True)
    assert stock._ot_study.trials[0].state == TrialState.COMPLETE


def test_a_repeated_epoch_keeps_its_last_value_and_late_results_are_ignored():
    searcher = make_searcher(CONFIG)
    searcher.suggest("t")
    searcher.on_trial_result("t", {"epoch": 1, "val_top1": 0.5})
    # A restart from an older checkpoint trains epoch 1 again: its last value is the one the
    # trial went on from, and the one its history (results.Experiment.history) keeps.
    searcher.on_trial_result("t", {"epoch": 1, "val_top1": 0.9})
    searcher.on_trial_complete("t", result={"epoch": 4, "val_top1": 0.7, "config/epochs": 4})
    searcher.on_trial_result("t", {"epoch": 5, "val_top1": 0.1})
    searcher.on_trial_complete("t", result={"epoch": 5, "val_top1": 0.1})
    (trial,) = searcher.study.trials
    assert trial.intermediate_values == {1: 0.9, 4: 0.7}
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.7)


def test_tpe_sampler_is_seeded():
    a, b = make_searcher(CONFIG), make_searcher(CONFIG)
    for i in range(5):
        assert a.suggest(f"t{i}") == b.suggest(f"t{i}")
    assert isinstance(a, PruningAwareOptunaSearch)
    assert isinstance(a.study.sampler, optuna.samplers.TPESampler)


def test_asha_stops_the_worse_half_at_the_first_rung():
    scheduler = make_scheduler(CONFIG)  # grace 1, reduction 2, max_t 4 (the epochs)
    trials = [Trial("__fake", stub=True) for _ in range(4)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    decisions = [
        scheduler.on_trial_result(None, trial, {"epoch": 1, "val_top1": score})
        for trial, score in zip(trials, [0.5, 0.6, 0.2, 0.1], strict=True)
    ]
    # Asynchronous: a trial is judged against those that reached the rung before it.
    assert decisions == ["CONTINUE", "CONTINUE", "STOP", "STOP"]
    assert scheduler.on_trial_result(None, trials[1], {"epoch": 4, "val_top1": 0.9}) == "STOP"


def test_fifo_never_stops():
    config = CONFIG.model_copy(update={"scheduler": "fifo"})
    scheduler = make_scheduler(config)
    trial = Trial("__fake", stub=True)
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"epoch": 1, "val_top1": 0.0}) == "CONTINUE"


BRANCHED = SweepConfig.model_validate({
    "space": {"optimizer": {"choice": ["sgd", "adam"]},
              "lr": [{"loguniform": [1e-3, 0.3], "when": {"optimizer": ["sgd"]}},
                     {"loguniform": [1e-5, 3e-3], "when": {"optimizer": ["adam"]}}],
              "epochs": 4},
    "searcher": {"seed": 0, "n_startup_trials": 2,
                 "points_to_evaluate": [{"optimizer": "adam", "lr": 2e-3}]},
})


def test_branches_reach_ray_under_the_field_name():
    searcher = make_searcher(BRANCHED)
    first = searcher.suggest("t0")
    assert first == {"optimizer": "adam", "lr": 2e-3, "epochs": 4}  # the point, as given
    assert searcher.study.trials[0].params == {"optimizer": "adam", "lr|adam": 2e-3}
    for i in range(1, 8):
        config = searcher.suggest(f"t{i}")
        assert set(config) == {"optimizer", "lr", "epochs"}
        low, high = (1e-3, 0.3) if config["optimizer"] == "sgd" else (1e-5, 3e-3)
        assert low <= config["lr"] <= high


DIVERGED_AT_3 = {"epoch": 3, "val_top1": 0.0, "diverged": True,
                 "diverged_message": "training loss became nan by batch 2 of the epoch (lr 0.2)"}


def test_a_diverged_trial_is_pruned_infeasible_and_marked():
    searcher = make_searcher(CONFIG)
    searcher.suggest("healthy")
    searcher.on_trial_complete("healthy", result={"epoch": 4, "val_top1": 0.3,
                                                  "config/epochs": 4})
    searcher.suggest("blown")
    for epoch in (1, 2):
        searcher.on_trial_result("blown", {"epoch": epoch, "val_top1": 0.5})
    searcher.on_trial_result("blown", DIVERGED_AT_3)
    searcher.on_trial_complete("blown", result=DIVERGED_AT_3)
    healthy, blown = searcher.study.trials
    assert blown.state == TrialState.PRUNED
    assert blown.intermediate_values == {1: 0.5, 2: 0.5, 3: 0.0}  # the worst, where it blew up
    assert blown.user_attrs == {"diverged": DIVERGED_AT_3["diverged_message"], "trial_id": "blown"}
    assert blown.constraints == {"diverged": 1.0}
    assert healthy.constraints == {}
    assert searcher.study.best_trial.number == healthy.number


def test_tpe_ranks_a_diverged_trial_below_every_other():
    # TPE's own split of the trials into its good and bad groups: with room for all but one
    # trial in the good group, the diverged one (epoch 3) is left out, although trials ASHA
    # stopped at epoch 1 rank below a PRUNED trial that reached epoch 3.
    from optuna.samplers._tpe.sampler import _split_trials

    study = optuna.create_study(direction="maximize")
    for epochs, value in ((4, 0.3), (1, 0.2), (1, 0.1)):
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        for epoch in range(1, epochs + 1):
            trial.report(value, epoch)
        study.tell(trial, value if epochs == 4 else None,
                   state=TrialState.COMPLETE if epochs == 4 else TrialState.PRUNED)
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1.0, log=True)
    for epoch, value in ((1, 0.5), (2, 0.5), (3, 0.0)):
        trial.report(value, epoch)
    tell_diverged(study, trial, "training loss became nan")
    below, above = _split_trials(study, study.trials, len(study.trials) - 1)
    assert [t.number for t in above] == [3]
    assert [t.number for t in below] == [0, 1, 2]


LIMIT = 0.1  # the 1-D objective below diverges above this learning rate
STARTUP, TRIALS = 10, 40


def diverging_points_after_startup(*, told_as_diverged: bool, seed: int) -> int:
    """Drive the sweep's searcher on a 1-D objective whose best lr is right below LIMIT and
    that diverges above it; count the trials TPE (after its random start) sends above LIMIT."""
    config = SweepConfig.model_validate({
        "space": {"lr": {"loguniform": [1e-4, 1.0]}, "epochs": 1},
        "searcher": {"seed": seed, "n_startup_trials": STARTUP},
    })
    searcher = make_searcher(config)
    diverged = 0
    for index in range(TRIALS):
        trial_id = f"t{index}"
        lr = searcher.suggest(trial_id)["lr"]
        if lr <= LIMIT:
            score = 1 - math.log10(LIMIT / lr) / 3  # 1.0 at LIMIT, 0.0 at 1e-4
            searcher.on_trial_complete(trial_id, {"epoch": 1, "val_top1": score,
                                                  "config/epochs": 1})
            continue
        diverged += index >= STARTUP
        if told_as_diverged:  # what run_trial reports now
            searcher.on_trial_complete(trial_id, {**DIVERGED_AT_3, "epoch": 1})
        else:  # before: the trial raised, Ray gave up on it, the searcher told FAIL
            searcher.on_trial_complete(trial_id, None, error=True)
    return diverged


def test_tpe_samples_far_fewer_diverging_points_once_told():
    told = [diverging_points_after_startup(told_as_diverged=True, seed=s) for s in (0, 1)]
    failed = [diverging_points_after_startup(told_as_diverged=False, seed=s) for s in (0, 1)]
    # Told FAIL, the region above LIMIT stays unexplored to TPE, and the best lr is at its
    # edge: nearly every suggestion goes there. Told as diverged, it is the worst region.
    assert all(f >= 0.8 * (TRIALS - STARTUP) for f in failed), failed
    assert all(t <= f / 2 for t, f in zip(told, failed, strict=True)), (told, failed)
