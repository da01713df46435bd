"""bench/replay.py's --small mode replays the recorded curves (bench/curves/main.json) through
ASHA and PASHA in seconds, and reports what BENCHMARKS.md's tables hold."""

from __future__ import annotations

import sys

import optuna
from bench_runs import BENCH, run_bench
from optuna.trial import TrialState

from carsweep.config.sweep import SweepConfig
from carsweep.search.searcher import make_sampler

sys.path.insert(0, str(BENCH))


def test_replay_small_mode_compares_pasha_with_asha_on_the_recorded_curves(tmp_path):
    outcomes, printed = run_bench("replay.py", "--small", out=tmp_path / "outcomes.json",
                                  timeout=300)
    assert "| searcher | scheduler | regret (pt) |" in printed
    assert list(outcomes) == ["random/asha", "random/pasha", "tpe/asha", "tpe/pasha"]
    for name, runs in outcomes.items():
        assert len(runs) == 2, name  # seeds
        for run in runs:
            assert run["trials"] == 8
            assert 0 <= run["regret"] <= run["best_tried"] <= 1
            assert run["gpu_s"] > 0
            assert run["wall_s"] <= run["gpu_s"]  # 2 workers: wall time is at most the work
            assert run["complete"] >= 1  # importance and the sweep plots need COMPLETE trials
    for run in outcomes["tpe/pasha"] + outcomes["random/pasha"]:
        assert run["final_max"] in (3, 9, 12)  # the ladder from its start (rungs 1, 3, 9)
        assert run["starts"] >= run["trials"]  # a resume is a start, and costs one
    for run in outcomes["tpe/asha"]:
        assert run["starts"] == run["trials"]  # ASHA never pauses


# The bench's "tpe paused as pruned" searcher: TPE reading a trial PASHA paused (RUNNING, with
# epochs reported) as pruned at its last epoch. Exactly TPE's own reading of pruned trials,
# and the study unchanged.
X = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}


def _tpe() -> optuna.samplers.TPESampler:
    return make_sampler(SweepConfig.model_validate(
        {"searcher": {"seed": 3, "n_startup_trials": 4}, "space": {"lr": 0.01}}))


def _study_of_trials_at_epoch_3(sampler, *, ended: bool) -> optuna.Study:
    """Eight trials that reported epochs 1-3: x near 0.2 scored 0.9, near 0.8 0.1; paused
    (RUNNING, as PASHA leaves them) or `ended` (told PRUNED there)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for x in (0.15, 0.2, 0.25, 0.18, 0.75, 0.8, 0.85, 0.78):
        study.enqueue_trial({"x": x})
        trial = study.ask(X)
        for epoch in (1, 2, 3):
            trial.report(0.9 if x < 0.5 else 0.1, epoch)
        if ended:
            study.tell(trial, state=TrialState.PRUNED)
    return study


def _suggestions(study: optuna.Study, count: int = 12) -> list[float]:
    return [study.ask(X).params["x"] for _ in range(count)]


def test_tpe_paused_as_pruned_reads_paused_trials_as_tpe_reads_pruned_ones():
    from replay import PausedSeenAsPruned

    paused = _study_of_trials_at_epoch_3(PausedSeenAsPruned(_tpe()), ended=False)
    suggested = _suggestions(paused)
    assert suggested == _suggestions(_study_of_trials_at_epoch_3(_tpe(), ended=True))
    assert {t.state for t in paused.trials} == {TrialState.RUNNING}  # nothing told ended


def test_shipped_tpe_samples_at_random_while_every_trial_is_paused():
    random = _study_of_trials_at_epoch_3(optuna.samplers.RandomSampler(seed=3), ended=False)
    paused = _study_of_trials_at_epoch_3(_tpe(), ended=False)
    assert _suggestions(paused) == _suggestions(random)  # its start-up: RandomSampler's draws
    modelled = _study_of_trials_at_epoch_3(_tpe(), ended=True)
    assert _suggestions(modelled) != _suggestions(
        _study_of_trials_at_epoch_3(optuna.samplers.RandomSampler(seed=3), ended=True))


# The bench's "asha grace from curves": the first wave (3 trials here) trains to
# max_t // rf = 3 epochs unstopped; the grace is the first epoch from which ASHA's top third
# among them stays the one at epoch 3; ASHA with that grace then replays their epochs.
WAVE = {"a": [0.9, 0.5, 0.5], "b": [0.1, 0.6, 0.7], "c": [0.2, 0.55, 0.6]}


class _Controller:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials


def test_grace_from_curves_is_the_first_epoch_from_which_the_first_waves_cut_holds():
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from replay import METRIC, GraceFromCurvesASHA

    rule = GraceFromCurvesASHA(max_t=9, reduction_factor=3, probes=3)
    trials = [Trial("replay", trial_id=name, stub=True) for name in WAVE]
    controller = _Controller(trials)
    for trial in trials:
        rule.on_trial_add(controller, trial)
    decisions = {}
    for epoch in (1, 2, 3):
        for trial in trials:
            result = {"epoch": epoch, METRIC: WAVE[trial.trial_id][epoch - 1]}
            decisions[trial.trial_id] = rule.on_trial_result(controller, trial, result)
    # top third: a at epoch 1, b at 2 and 3 -> grace 2 (rungs 2, 6)
    assert rule.grace == 2
    # rung 2 replayed in trial order: a 0.5 (first), b 0.6 >= 0.5, c 0.55 < 0.567: c stops
    assert decisions == {"a": TrialScheduler.CONTINUE, "b": TrialScheduler.CONTINUE,
                         "c": TrialScheduler.STOP}
    # an unseen wave where epoch 1 already cuts as epoch 3 does: grace 1
    rule = GraceFromCurvesASHA(max_t=9, reduction_factor=3, probes=3)
    for trial in trials:
        rule.on_trial_add(controller, trial)
        rule.curves[trial.trial_id] = dict(enumerate([0.1, 0.1, 0.1], 1))
    rule.curves["b"] = {1: 0.5, 2: 0.6, 3: 0.7}
    assert rule.choose_grace() == 1
