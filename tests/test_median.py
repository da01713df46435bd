"""`scheduler: median`: Ray's MedianStoppingRule as carsweep runs it (carsweep/search/median.py):
its settings, the pre-flight's line, and the state a resumed sweep's scheduler rebuilds from
the trials' result.json. tests/test_pasha_sweep.py runs it under real Tune against the replay."""

from __future__ import annotations

import json
from pathlib import Path

from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from carsweep.cli.settings import catalog
from carsweep.config.sweep import SweepConfig
from carsweep.search.median import MedianStopping
from carsweep.search.preflight.config_checks import check_scheduler
from carsweep.search.preflight.report import Report
from carsweep.search.tuner import checkpoint_policy, make_scheduler


def median_sweep(**changes) -> SweepConfig:
    return SweepConfig.model_validate({"scheduler": "median", "space": {"epochs": 12},
                                       **changes})


def test_the_grace_is_a_quarter_of_max_t_unless_set():
    assert median_sweep().median_grace() == 3
    assert median_sweep(space={"epochs": 30}).median_grace() == 7
    assert median_sweep(space={"epochs": 3}).median_grace() == 1
    assert median_sweep(median={"grace_period": 5}).median_grace() == 5
    scheduler = make_scheduler(median_sweep(median={"min_samples_required": 2}))
    assert isinstance(scheduler, MedianStopping)
    assert (scheduler._grace_period, scheduler._min_samples_required) == (3, 2)
    assert checkpoint_policy(median_sweep()).at_epochs == frozenset()  # no rungs


def test_settings_list_median():
    listed = {entry["name"]: entry for entry in catalog()["sweep"]}
    assert {"median.grace_period", "median.min_samples_required"} <= set(listed)
    assert "median" in str(listed["scheduler"])


def test_the_preflight_says_when_the_rule_starts_comparing():
    report = Report()
    check_scheduler(median_sweep(), report)
    assert report.ok
    assert ("scheduler: median stopping: from epoch 3 of 12, a trial whose best val_top1 is "
            "worse than the median of the other trials' running averages stops (compared once "
            "3 others reached its epoch)") in report.text()
    report = Report()
    check_scheduler(median_sweep(median={"grace_period": 13}), report)
    assert not report.ok
    assert "`median.grace_period` is 13, but must be <= max_t (12)" in report.text()


def _trial(tmp_path, trial_id: str, values: list[float] | None = None) -> Trial:
    """A trial of experiment `exp` under tmp_path; with `values`, its result.json holds them
    as epochs 1, 2, ... (a trial of the sweep before it was resumed)."""
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp",
                             trial_dir_name=f"trial_{trial_id}")
    trial = Trial("curve", trial_id=trial_id, storage=storage, stub=True)
    if values is not None:
        folder = tmp_path / "exp" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text("".join(
            json.dumps({"epoch": epoch, "val_top1": value, "trial_id": trial_id}) + "\n"
            for epoch, value in enumerate(values, 1)) + '{"epoch": 9, "val_t')  # cut short
        trial.update_last_result({"epoch": len(values), "val_top1": values[-1]})
        trial.set_status(Trial.TERMINATED)
    return trial


def test_a_resumed_sweeps_rule_counts_the_trials_that_ran_before(tmp_path):
    """Three trials ended before the driver stopped; the resumed sweep's new trial, at 0.3 by
    epoch 3, is below their running averages' median (0.6) and stops. Ray's own rule, starting
    empty, would let it run on: no one to compare it with."""
    before = {"a": [0.5, 0.55, 0.6, 0.6], "b": [0.6, 0.65, 0.7, 0.7], "c": [0.4, 0.5, 0.6, 0.6]}
    config = median_sweep(median={"min_samples_required": 3})
    resumed, fresh = make_scheduler(config), make_scheduler(config)
    for trial_id, values in before.items():
        resumed.on_trial_add(None, _trial(tmp_path, trial_id, values))
    new = _trial(tmp_path, "d")
    resumed.on_trial_add(None, new)
    fresh.on_trial_add(None, new)
    for epoch, value in enumerate([0.2, 0.25], 1):
        assert resumed.on_trial_result(None, new, {"epoch": epoch, "val_top1": value}) == \
            TrialScheduler.CONTINUE  # within the grace period
    assert resumed.on_trial_result(None, new, {"epoch": 3, "val_top1": 0.3}) == \
        TrialScheduler.STOP
    for epoch, value in enumerate([0.2, 0.25, 0.3], 1):
        assert fresh.on_trial_result(None, new, {"epoch": epoch, "val_top1": value}) == \
            TrialScheduler.CONTINUE


def test_an_epoch_trained_again_after_a_resume_counts_once(tmp_path):
    scheduler = make_scheduler(median_sweep())
    trial = _trial(tmp_path, "a", [0.5, 0.55, 0.6, 0.6])
    trial.set_status(Trial.PENDING)  # unfinished: Ray runs it on from its epoch-2 checkpoint
    scheduler.on_trial_add(None, trial)
    for epoch, value in ((3, 0.62), (4, 0.64), (5, 0.66)):
        scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_top1": value})
    assert [(row["epoch"], row["val_top1"]) for row in scheduler._results[trial]] == [
        (1, 0.5), (2, 0.55), (3, 0.62), (4, 0.64), (5, 0.66)]


def test_an_unknown_scheduler_flag_is_one_line_and_writes_nothing(tmp_path, capsys):
    from carsweep.cli import main

    demo = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert main(["sweep", demo, "--scheduler", "hyperband", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("`scheduler` = 'hyperband' is invalid: Input should be 'asha', "
                        "'pasha', 'median' or 'fifo'")
    assert "\n" not in err
    assert not list(tmp_path.iterdir())
