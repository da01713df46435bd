"""PASHA's rules and scheduler against cases worked by hand from the paper's algorithm (and the
authors' code, Syne Tune v0.14.2), driven with Ray's own Trial objects as Ray's scheduler
tests do; the sweep under real Ray Tune is tests/test_pasha_sweep.py."""

from __future__ import annotations

import pytest
import yaml
from ray.tune.experiment import Trial

from carsweep.cli.settings import catalog
from carsweep.config.sweep import SweepConfig, load_sweep
from carsweep.errors import UserError
from carsweep.search.pasha import PashaScheduler, PauseAwareLimiter
from carsweep.search.pasha_rules import epsilon, promotable, ranking_holds
from carsweep.search.preflight.config_checks import check_scheduler
from carsweep.search.preflight.report import Report
from carsweep.search.searcher import make_searcher
from carsweep.search.tuner import checkpoint_policy, make_scheduler

# promotion: the best not yet promoted, if at least the rung's 1 - 1/rf quantile -------------


def test_promotes_the_best_waiting_trial_in_the_top_half():
    values = {"a": 0.5, "b": 0.6, "c": 0.2, "d": 0.1}  # median (linear) 0.35
    assert promotable(values, set(), 2, "max") == "b"
    assert promotable(values, {"b"}, 2, "max") == "a"
    assert promotable(values, {"a", "b"}, 2, "max") is None  # c: 0.2 < 0.35


def test_a_rung_of_one_trial_promotes_nobody():
    assert promotable({"a": 0.9}, set(), 3, "max") is None


def test_promotion_for_a_metric_to_minimise():
    values = {"a": 1.0, "b": 2.0, "c": 3.0}  # the 1/3 quantile: 1 + 2/3 * (2 - 1) = 1.667
    assert promotable(values, set(), 3, "min") == "a"
    assert promotable(values, {"a"}, 3, "min") is None  # b: 2.0 > 1.667


# ε: pairs that swapped and swapped back ---------------------------------------------------

CURVES = {
    "A": {1: 0.5, 2: 0.4, 3: 0.6},   # ahead of B at 1, behind at 2, ahead again at 3
    "B": {1: 0.4, 2: 0.5, 3: 0.45},
    "C": {1: 0.1, 2: 0.2, 3: 0.3},   # behind both throughout
}


def test_epsilon_is_the_gap_of_pairs_that_flipped_and_flipped_back():
    assert epsilon(CURVES, top_epoch=3, bottom_epoch=1, percentile=90) == pytest.approx(0.15)


def test_a_pair_that_flipped_once_gives_no_epsilon():
    once = {"A": {1: 0.5, 2: 0.4, 3: 0.3}, "B": {1: 0.4, 2: 0.5, 3: 0.6}}
    assert epsilon(once, top_epoch=3, bottom_epoch=1, percentile=90) is None


def test_epsilon_is_the_percentile_of_the_gaps():
    # D swaps and swaps back with A (gap 0.1 at epoch 3) and with B (0.25), not with C: the
    # gaps are 0.1, 0.15, 0.25, and numpy's linear 90th percentile lies 0.8 of the way
    # from 0.15 to 0.25
    four = {**CURVES, "D": {1: 0.55, 2: 0.35, 3: 0.7}}
    assert epsilon(four, top_epoch=3, bottom_epoch=1, percentile=90) == pytest.approx(0.23)


def test_epsilon_looks_only_above_the_lower_rung():
    assert epsilon(CURVES, top_epoch=3, bottom_epoch=3, percentile=90) is None


# the soft ranking (the authors' test cases) -----------------------------------------------

TOP = {"0": 10.0, "1": 14.6, "2": 14.3, "3": 11.6}
BELOW = {"0": 10.0, "1": 14.2, "2": 14.3, "3": 11.6}


def test_a_swap_within_epsilon_keeps_the_ranking():
    assert ranking_holds(TOP, BELOW, 0.3, "min")   # 1 and 2 swap, 0.1 apart below
    assert ranking_holds(TOP, BELOW, 0.3, "max")


def test_a_swap_wider_than_epsilon_changes_the_ranking():
    assert not ranking_holds(TOP, BELOW, 0.03, "min")


def test_the_same_order_holds_at_any_epsilon():
    same = {"0": 10.1, "1": 19.7, "2": 14.2, "3": 11.5}
    assert ranking_holds({"0": 10.0, "1": 19.6, "2": 14.3, "3": 11.6}, same, 0.0, "max")


def test_epsilon_is_zero_with_one_trial_below():
    assert ranking_holds({"a": 0.5}, {"a": 0.9, "b": 0.1}, 10.0, "max")


# the scheduler: pause at each rung, resume the best, grow the maximum ----------------------

def pasha() -> PashaScheduler:
    config = SweepConfig.model_validate({"scheduler": "pasha", "space": {"epochs": 27},
                                         "asha": {"grace_period": 1, "reduction_factor": 3}})
    return make_scheduler(config)


def report(scheduler, trial, values: dict[int, float]) -> list[str]:
    return [scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_top1": value})
            for epoch, value in values.items()]


def test_the_ladder_starts_at_the_second_rung():
    scheduler = pasha()
    assert scheduler.ladder() == [1, 3, 9, 27]
    assert scheduler.current_max == 3


def test_one_growth_and_one_resume_worked_by_hand():
    scheduler = pasha()
    a, b, c, d = (Trial("__fake", stub=True) for _ in range(4))
    for trial in (a, b, c, d):
        scheduler.on_trial_add(None, trial)
    # rung 1 holds a alone: nobody to promote, a pauses
    assert report(scheduler, a, {1: 0.5}) == ["PAUSE"]
    # b is the best of {a, b} and above its 2/3 quantile (0.567): promoted at once, so it
    # continues; at rung 3 (the maximum) it pauses: a (0.5 < 0.567) is not promotable
    assert report(scheduler, b, {1: 0.6, 2: 0.65, 3: 0.7}) == ["CONTINUE", "CONTINUE", "PAUSE"]
    assert report(scheduler, c, {1: 0.2}) == ["PAUSE"]  # 2/3 quantile 0.533: a still below
    assert (scheduler.current_max, scheduler.growths) == (3, [])
    # d leads rung 1 (0.9) but trails b at rung 3 (0.6 < 0.7): the ranking changed (ε is 0:
    # no pair swapped back), so the maximum grows to 9, and the slot d frees resumes b
    assert report(scheduler, d, {1: 0.9, 2: 0.5, 3: 0.6}) == ["CONTINUE", "CONTINUE", "PAUSE"]
    assert scheduler.current_max == 9
    assert scheduler.growths == [(8, 9)]  # at the 8th report
    assert scheduler._to_resume == [b.trial_id]
    assert scheduler.epsilon == 0.0
    # b resumes at epoch 4 and pauses at 9, the new maximum; nobody else is promotable
    assert report(scheduler, b, {e: 0.7 + e / 100 for e in range(4, 10)})[-1] == "PAUSE"
    assert scheduler.next_promotion() is None


def test_a_trial_at_max_t_stops():
    scheduler = pasha()
    trial = Trial("__fake", stub=True)
    scheduler.on_trial_add(None, trial)
    scheduler._max_index = 3  # grown to max_t
    assert scheduler.on_trial_result(None, trial, {"epoch": 27, "val_top1": 0.1}) == "STOP"


# settings, validation, the pre-flight -------------------------------------------------------


@pytest.mark.parametrize(("changes", "expected"), [
    ({"pasha": {"epsilon_percentile": 0}}, "pasha.epsilon_percentile"),
    ({"pasha": {"epsilon_percentile": 101}}, "less than or equal to 100"),
    ({"pasha": {"epsilon": 0.1}}, "pasha.epsilon"),
    ({"scheduler": "hyperband"}, "'asha', 'pasha', 'median' or 'fifo'"),
    ({"scheduler": "median", "median": {"grace_period": 0}}, "median.grace_period"),
    ({"scheduler": "median", "median": {"min_samples_required": 0}},
     "median.min_samples_required"),
    ({"scheduler": "median", "median": {"grace": 2}}, "median.grace"),
])
def test_a_bad_scheduler_setting_is_one_line(tmp_path, changes, expected):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"scheduler": "pasha", **changes}))
    with pytest.raises(UserError) as caught:
        load_sweep(path)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_settings_lists_pasha():
    listed = {entry["name"]: entry for entry in catalog()["sweep"]}
    assert "pasha.epsilon_percentile" in listed
    assert "pasha" in str(listed["scheduler"])


def test_the_preflight_prints_the_ladder_its_start_and_that_it_grows():
    report = Report()
    config = SweepConfig.model_validate({"scheduler": "pasha", "num_samples": 27,
                                         "space": {"epochs": 27},
                                         "asha": {"grace_period": 1, "reduction_factor": 3}})
    check_scheduler(config, report)
    text = report.text()
    assert report.ok
    assert "pasha: rungs at 1, 3, 9" in text
    assert "The maximum starts at epoch 3 and grows a rung at a time, up to 27" in text
    assert "3  9.0 of 27  (the starting maximum)" in text
    assert "27  1.0 of 27  (max_t)" in text


def test_pasha_checkpoints_at_every_rung():
    config = SweepConfig.model_validate({"scheduler": "pasha", "space": {"epochs": 27},
                                         "asha": {"grace_period": 1, "reduction_factor": 3}})
    assert checkpoint_policy(config).at_epochs == {1, 3, 9, 27}


def test_a_resting_trial_frees_its_slot_and_a_held_one_takes_it_back():
    config = SweepConfig.model_validate({"space": {"lr": {"loguniform": [1e-3, 0.1]}}})
    limiter = PauseAwareLimiter(make_searcher(config), max_concurrent=2)
    assert limiter.suggest("a") is not None
    assert limiter.suggest("b") is not None
    assert limiter.suggest("c") is None  # two running: full, as Ray's ConcurrencyLimiter
    limiter.rest("a")  # paused at a rung, not about to resume
    assert limiter.suggest("c") is not None
    limiter.hold("a")  # promoted: it will run again
    assert limiter.suggest("d") is None  # a, b and c count: over the limit until one ends
    limiter.on_trial_complete("b", result={"epoch": 3, "val_top1": 0.7})
    assert limiter.suggest("d") is None  # a and c
    limiter.rest("c")
    limiter.on_trial_complete("c", result={"epoch": 1, "val_top1": 0.5})  # stopped at the end
    assert limiter.resting == set()
    assert limiter.suggest("d") is not None  # a and d
