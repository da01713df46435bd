"""The study of a sweep in a bucket (against the S3-compatible server on 127.0.0.1): the
searcher PUTs it into the bucket before it saves its state in the folder Tune uploads, so the
bucket never holds a searcher state that names study trials its study lacks; a bucket that
refuses the PUT leaves the previous state in place; a resume whose Tune state and searcher
state come from different saves follows Tune's. Saved as Tune saves it (Searcher.save_to_dir
into the driver's staging folder), resumed as `resume` on a new head does."""

from __future__ import annotations

import logging

import optuna
import pytest
from bucket_server import delete_bucket

from carsweep.config.files import STUDY_FILE, STUDY_NAME
from carsweep.config.sweep import SweepConfig
from carsweep.results import open_study
from carsweep.results.study import driver_study_file, fetch_driver_study, journal_storage
from carsweep.search.searcher import make_searcher, searcher_resumed_in
from carsweep.storage import location

CONFIG = SweepConfig.model_validate({
    "space": {"lr": {"loguniform": [1e-3, 0.1]}, "epochs": 3},
    "searcher": {"seed": 3, "n_startup_trials": 2},
})


@pytest.fixture
def head(tmp_path, monkeypatch):
    """Switches this test's driver to a head with a state folder of its own."""
    def on(name: str) -> None:
        monkeypatch.setenv("CARSWEEP_STATE_DIR", str(tmp_path / name))
    on("head-1")
    return on


def bucket_searcher(experiment: str):
    return make_searcher(CONFIG, study_file=driver_study_file(location(experiment)),
                         bucket_experiment=experiment)


def saved_state(staging) -> list[str]:
    return sorted(p.name for p in staging.glob("searcher-state-*.pkl"))


def test_the_study_reaches_the_bucket_before_the_state_that_names_its_trials(
        s3_bucket, head, tmp_path):
    experiment = f"{s3_bucket}/results/put"
    searcher = bucket_searcher(experiment)
    staging = tmp_path / "staging"
    staging.mkdir()
    for trial in ("a", "b"):
        searcher.suggest(trial)
        searcher.on_trial_result(trial, {"epoch": 1, "val_top1": 0.5})
    searcher.save_to_dir(str(staging), session_str="s")

    assert saved_state(staging) == ["searcher-state-s.pkl"]
    assert not (staging / STUDY_FILE).exists()  # not left to Tune's upload
    in_bucket = {t.user_attrs["trial_id"]: t.intermediate_values
                 for t in open_study(experiment).trials}
    assert in_bucket == {"a": {1: 0.5}, "b": {1: 0.5}}

    # A new head: the study from the bucket, the state Tune uploaded; the resumed searcher
    # goes on writing trial b's study trial.
    head("head-2")
    fetch_driver_study(location(experiment))
    with searcher_resumed_in(location(experiment)):
        resumed = bucket_searcher(experiment)
        resumed.restore_from_dir(str(staging))
    resumed.on_trial_result("b", {"epoch": 2, "val_top1": 0.6})
    resumed.save_to_dir(str(staging), session_str="s")
    assert {t.user_attrs["trial_id"]: t.intermediate_values
            for t in open_study(experiment).trials}["b"] == {1: 0.5, 2: 0.6}


def test_a_bucket_that_refuses_the_study_keeps_the_state_before_it(
        bucket_server, s3_bucket, head, tmp_path, caplog):
    experiment = f"{s3_bucket}/results/gone"
    searcher = bucket_searcher(experiment)
    staging = tmp_path / "staging"
    staging.mkdir()
    searcher.suggest("a")
    searcher.save_to_dir(str(staging), session_str="s")
    before = (staging / "searcher-state-s.pkl").read_bytes()
    searcher.suggest("b")
    delete_bucket(bucket_server, location(s3_bucket).bucket)
    with caplog.at_level(logging.WARNING, logger="carsweep.search.searcher"):
        searcher.save_to_dir(str(staging), session_str="s")  # the sweep goes on

    assert [p.name for p in staging.iterdir()] == ["searcher-state-s.pkl"]  # no temporary file
    assert (staging / "searcher-state-s.pkl").read_bytes() == before  # names no trial b
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("study not uploaded, the searcher's state in the bucket stays "
                              f"as it was: {experiment}/{STUDY_FILE}: cannot write it")


def searcher_states(s3_bucket, head, tmp_path):
    """(experiment, state naming trial a, state naming a and b): two saves of a sweep in a
    bucket, the study in the bucket holding both trials, each with one epoch."""
    experiment = f"{s3_bucket}/results/apart"
    searcher = bucket_searcher(experiment)
    older, newer = tmp_path / "older", tmp_path / "newer"
    for trial, staging in (("a", older), ("b", newer)):
        staging.mkdir()
        searcher.suggest(trial)
        searcher.on_trial_result(trial, {"epoch": 1, "val_top1": 0.5})
        searcher.save_to_dir(str(staging), session_str="s")
    head("head-2")
    fetch_driver_study(location(experiment))
    return experiment, older, newer


def resumed_from(experiment: str, staging, saved_trials: set[str]):
    with searcher_resumed_in(location(experiment), saved_trials):
        searcher = bucket_searcher(experiment)
        searcher.restore_from_dir(str(staging))
    return searcher


def study_trials(experiment: str) -> dict[str, tuple[int, dict, dict]]:
    """The driver's study (the bucket's gets it at the next save)."""
    study = optuna.load_study(study_name=STUDY_NAME, storage=journal_storage(
        driver_study_file(location(experiment))))
    return {t.user_attrs["trial_id"]: (t.number, t.params, t.intermediate_values)
            for t in study.trials}


def test_a_resume_follows_tune_state_where_the_searcher_state_in_the_bucket_is_older(
        s3_bucket, head, tmp_path):
    """Tune's state names trial b, the searcher's state from the save before does not: b goes
    on writing its own study trial, and the next new trial gets a study trial of its own."""
    experiment, older, _ = searcher_states(s3_bucket, head, tmp_path)
    resumed = resumed_from(experiment, older, {"a", "b"})
    resumed.on_trial_result("b", {"epoch": 2, "val_top1": 0.6})
    resumed.suggest("c")
    trials = study_trials(experiment)
    assert sorted(trials) == ["a", "b", "c"]
    assert trials["b"][2] == {1: 0.5, 2: 0.6}
    assert trials["c"][0] == 2  # a new study trial, not b's


def test_a_resume_follows_tune_state_where_the_searcher_state_in_the_bucket_is_newer(
        s3_bucket, head, tmp_path):
    """The searcher's state names trial b, Tune's state from the save before does not (Tune
    never runs b again): b's study trial is handed, with its parameters, to the trial Ray
    creates in its place, rather than left RUNNING."""
    experiment, _, newer = searcher_states(s3_bucket, head, tmp_path)
    b_number, b_params, _ = study_trials(experiment)["b"]
    resumed = resumed_from(experiment, newer, {"a"})
    assert resumed.suggest("c")["lr"] == b_params["lr"]
    resumed.on_trial_result("c", {"epoch": 1, "val_top1": 0.7})
    trials = study_trials(experiment)
    assert sorted(trials) == ["a", "c"]
    assert trials["c"] == (b_number, b_params, {1: 0.7})
