"""The searcher's study in the experiment folder: written as trials report, one study per
experiment, and exact after Ray pickles the searcher and restores it (resume after a killed
driver), driven with fake results as Ray drives it (tests/test_searcher.py does the same with
an in-memory study).
"""

from __future__ import annotations

import pickle

import optuna
from optuna.trial import TrialState

from carsweep.config.files import STUDY_FILE, STUDY_NAME
from carsweep.config.sweep import SweepConfig
from carsweep.results import open_study
from carsweep.search.searcher import make_searcher

CONFIG = SweepConfig.model_validate({
    "space": {"lr": {"loguniform": [1e-3, 0.1]}, "optimizer": {"choice": ["sgd", "adam"]},
              "epochs": 4},
    "searcher": {"seed": 3, "n_startup_trials": 2},
})


def report(searcher, trial_id, *values):
    for epoch, value in enumerate(values, start=1):
        searcher.on_trial_result(trial_id, {"epoch": epoch, "val_top1": value})


def complete(searcher, trial_id, epoch, value):
    searcher.on_trial_complete(trial_id, {"epoch": epoch, "val_top1": value, "config/epochs": 4})


def by_ray_trial(folder):
    return {t.user_attrs["trial_id"]: t for t in open_study(folder).trials}


def test_the_study_file_holds_each_trial_as_it_reports(tmp_path):
    searcher = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE)
    config = searcher.suggest("a")
    report(searcher, "a", 0.25)
    seen = by_ray_trial(tmp_path)["a"]  # read while the trial runs, by another reader
    assert (seen.state, seen.intermediate_values) == (TrialState.RUNNING, {1: 0.25})
    assert seen.params["lr"] == config["lr"]
    complete(searcher, "a", 2, 0.5)  # stopped by ASHA at epoch 2 of 4
    searcher.suggest("b")
    report(searcher, "b", 0.1, 0.2, 0.3)
    complete(searcher, "b", 4, 0.4)
    study = open_study(tmp_path)
    assert study.metric_names == ["val_top1"]  # optuna-dashboard shows the metric's name
    a, b = by_ray_trial(tmp_path).values()
    assert (a.state, a.intermediate_values) == (TrialState.PRUNED, {1: 0.25, 2: 0.5})
    assert (b.state, b.value) == (TrialState.COMPLETE, 0.4)
    assert b.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}


def test_a_pickled_searcher_reopens_the_one_study_of_its_file(tmp_path):
    searcher = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE)
    searcher.suggest("a")
    pickled = pickle.dumps(searcher)  # as in Ray's tuner.pkl
    # It names the study trial of each Ray trial and holds no study: none to fork from the file.
    assert b"JournalStorage" not in pickled
    assert b"FrozenTrial" not in pickled
    restored = pickle.loads(pickled)
    report(restored, "a", 0.3)
    restored.suggest("b")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / STUDY_FILE)))
    assert optuna.get_all_study_names(storage) == [STUDY_NAME]
    assert list(by_ray_trial(tmp_path)) == ["a", "b"]
    assert by_ray_trial(tmp_path)["a"].intermediate_values == {1: 0.3}


def test_a_trial_asked_after_ray_snapshot_goes_to_the_trial_ray_creates_instead(tmp_path):
    searcher = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE)
    at_launch = pickle.dumps(searcher)  # tuner.pkl
    searcher.suggest("a")
    report(searcher, "a", 0.1)
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # Ray's last snapshot before the kill
    lost = searcher.suggest("b")  # Ray created b after it: a resume will not know b
    report(searcher, "b", 0.9, 0.8)
    report(searcher, "a", 0.1, 0.2)
    del searcher  # SIGKILL

    resumed = pickle.loads(at_launch)  # Tuner.restore, then the snapshot
    resumed.restore(str(tmp_path / "searcher-state.pkl"))
    assert resumed.suggest("c") == lost  # Ray's new trial in b's place: b's study trial
    report(resumed, "c", 0.3)
    complete(resumed, "a", 4, 0.6)
    complete(resumed, "c", 2, 0.4)
    trials = by_ray_trial(tmp_path)
    assert sorted(trials) == ["a", "c"]  # one study trial per trial Ray knows
    assert len(open_study(tmp_path).trials) == 2
    assert trials["a"].intermediate_values == {1: 0.1, 2: 0.2, 4: 0.6}  # nothing lost
    assert trials["c"].intermediate_values == {1: 0.3, 2: 0.4}  # c's own values
    assert trials["c"].state == TrialState.PRUNED


def test_an_end_the_study_has_is_not_written_again_after_a_resume(tmp_path, caplog):
    searcher = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE)
    searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher-state.pkl"))
    report(searcher, "a", 0.1, 0.2, 0.3)
    complete(searcher, "a", 4, 0.4)  # after the snapshot: a resume reruns it
    journal = (tmp_path / STUDY_FILE).read_text()

    resumed = pickle.loads(pickle.dumps(searcher))
    resumed.restore(str(tmp_path / "searcher-state.pkl"))
    report(resumed, "a", 0.1, 0.2, 0.3, 0.45)  # the rerun reports again
    complete(resumed, "a", 4, 0.45)
    assert (tmp_path / STUDY_FILE).read_text() == journal  # not a line added
    (trial,) = open_study(tmp_path).trials
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.4)  # the first end told
    assert "refused" not in caplog.text


def test_a_resume_tells_the_study_the_end_tune_has_where_the_study_is_older(tmp_path):
    """A killed driver's last upload to a bucket left Tune's state with trial a TERMINATED
    beside a study (and searcher state) from before a's end; Tune skips a on resume."""
    searcher = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE)
    at_launch = pickle.dumps(searcher)  # tuner.pkl
    searcher.suggest("a")
    report(searcher, "a", 0.1, 0.2, 0.3)
    searcher.save(str(tmp_path / "searcher-state.pkl"))
    uploaded = (tmp_path / STUDY_FILE).read_bytes()  # the study in the bucket: a RUNNING
    last = {"epoch": 4, "val_top1": 0.4, "config/epochs": 4}  # in Tune's state: TERMINATED
    complete(searcher, "a", 4, 0.4)
    del searcher  # SIGKILL
    (tmp_path / STUDY_FILE).write_bytes(uploaded)  # a new head fetches the bucket's study

    told = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE).tell_ends(
        {"a": last, "gone": last})  # gone: no study trial, nothing to end
    assert told == ["a"]
    resumed = pickle.loads(at_launch)
    resumed.restore(str(tmp_path / "searcher-state.pkl"))  # Tune runs nothing of a again
    (trial,) = open_study(tmp_path).trials
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.4)
    assert trial.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    again = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE)
    assert again.tell_ends({"a": {**last, "val_top1": 0.9}}) == []  # already ended
    assert open_study(tmp_path).trials[0].value == 0.4  # the first end told stays


def test_a_trial_tune_has_ended_early_is_told_pruned_on_resume(tmp_path):
    searcher = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE)
    searcher.suggest("a")
    report(searcher, "a", 0.1)
    stopped = {"epoch": 2, "val_top1": 0.2, "config/epochs": 4}  # ASHA stopped it at epoch 2
    told = make_searcher(CONFIG, study_file=tmp_path / STUDY_FILE).tell_ends(
        {"a": stopped})
    assert told == ["a"]
    (trial,) = open_study(tmp_path).trials
    assert (trial.state, trial.intermediate_values) == (TrialState.PRUNED, {1: 0.1, 2: 0.2})
