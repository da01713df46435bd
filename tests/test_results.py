"""The results store: an experiment folder read back without Ray (study and trial folders ->
trials table, history, best trial)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from no_ray import BLOCK_RAY
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sweep_runs import FINISHED_SWEEP

from carsweep.config.files import STUDY_NAME
from carsweep.config.sweep import SweepConfig, save_sweep
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.results import load_experiment, trials_table
from carsweep.results.store import read_trials_csv
from carsweep.results.study import journal_storage, study_path
from carsweep.trainable import build_model, load_checkpoint

METRIC = FINISHED_SWEEP["metric"]  # val_loss, mode min (tests/sweep_runs.py says why)


def _copy_without(experiment: Path, target: Path, *skip_globs: str) -> Path:
    """The experiment's files in `target` minus `skip_globs`; trial folders linked, not copied
    (their checkpoints are large)."""
    skipped = {path for pattern in skip_globs for path in experiment.glob(pattern)}
    target.mkdir()
    for path in experiment.iterdir():
        if path in skipped:
            continue
        if path.is_dir():
            (target / path.name).symlink_to(path, target_is_directory=True)
        else:
            shutil.copy2(path, target / path.name)
    return target


@pytest.mark.slow
def test_best_trial_has_the_best_metric_and_its_checkpoint_loads(finished_experiment,
                                                                  prepared_dataset):
    experiment = load_experiment(finished_experiment)
    table = experiment.trials
    assert len(table) == 4
    best = experiment.best()
    assert best.value == table[f"best_{METRIC}"].min()  # the finished sweep's mode: min
    assert table.loc[table["trial_id"] == best.trial_id, f"best_{METRIC}"].item() == best.value
    assert best.folder == finished_experiment / f"trial_{best.trial_id}"
    # The checkpoint is the epoch that scored best.value, and it loads into a ResNet-18.
    history = experiment.history(best.trial_id)
    at_checkpoint = history.loc[history["checkpoint_dir_name"] == best.checkpoint.name, METRIC]
    assert at_checkpoint.item() == best.value
    state = load_checkpoint(best.checkpoint)
    build_model(len(best.classes)).load_state_dict(state["model"])
    assert best.classes == load_dataset(prepared_dataset).classes
    params = json.loads((best.folder / "params.json").read_text())
    assert best.config == TrialConfig.model_validate(params)  # nothing but defaults added
    assert (experiment.sweep.metric, experiment.sweep.mode) == (METRIC, "min")
    assert experiment.sweep.num_samples == 4


@pytest.mark.slow
def test_history_has_one_row_per_epoch_matching_the_table(finished_experiment):
    experiment = load_experiment(finished_experiment)
    for row in experiment.trials.itertuples():
        history = experiment.history(row.trial_id)
        assert list(history["epoch"]) == list(range(1, row.epochs_run + 1))
        assert history[METRIC].iloc[-1] == getattr(row, f"last_{METRIC}")
        assert history[METRIC].min() == getattr(row, f"best_{METRIC}")
    stopped = experiment.trials[experiment.trials["stopped_early"]]
    assert len(stopped) >= 1
    assert (stopped["epochs_run"] < 3).all()


@pytest.mark.slow
def test_the_table_needs_only_the_study_and_the_trial_folders(finished_experiment, tmp_path):
    # Without trials.csv and without any of Ray's own state files: the same table.
    copy = _copy_without(finished_experiment, tmp_path / "bare", "trials.csv",
                         "experiment_state-*.json", "searcher-state-*.pkl",
                         "search_gen_state-*.json", "tuner.pkl", "basic-variant-state-*.json")
    assert not list(copy.glob("*.pkl"))
    rebuilt = load_experiment(copy).trials
    saved = read_trials_csv((finished_experiment / "trials.csv").read_text())
    pd.testing.assert_frame_equal(rebuilt, saved)
    assert set(saved["state"]) <= {"COMPLETE", "PRUNED"}
    assert (saved["stopped_early"] == (saved["state"] == "PRUNED")).all()
    assert load_experiment(copy).best().trial_id == load_experiment(finished_experiment
                                                                     ).best().trial_id


def _write_trial(experiment: Path, trial_id: str, rows: list[dict], params: dict,
                 state: TrialState = TrialState.COMPLETE, **user_attrs: str) -> None:
    """A trial as a sweep leaves it: its folder, and its trial in the study (values of `lr`
    in a log range, as the searcher records them)."""
    folder = experiment / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    study = optuna.create_study(storage=journal_storage(study_path(experiment)),
                                study_name=STUDY_NAME, load_if_exists=True)
    steps = {int(r["epoch"]): r["val_loss"] for r in rows if "epoch" in r}
    final = rows[-1]["val_loss"] if state == TrialState.COMPLETE else None
    study.add_trial(optuna.trial.create_trial(
        params={"lr": params["lr"]}, distributions={"lr": FloatDistribution(1e-3, 10, log=True)},
        state=state, value=final, intermediate_values=steps,
        user_attrs={"trial_id": trial_id, **user_attrs}))


def _write_diverged_trial(experiment: Path, trial_id: str) -> str:
    """A trial whose loss became NaN in epoch 2 (val_loss 0.2 at epoch 1); its message."""
    message = "training loss became nan by batch 3 of the epoch (lr 9); the run stopped"
    _write_trial(experiment, trial_id, [
        {"epoch": 1, "val_loss": 0.2},
        {"epoch": 2, "val_loss": float("inf"), "diverged": True, "diverged_message": message},
    ], {"epochs": 3, "lr": 9.0}, state=TrialState.PRUNED, diverged=message)
    return message


def _bare_experiment(tmp_path: Path) -> Path:
    experiment = tmp_path / "exp"
    save_sweep(SweepConfig(name="exp", metric="val_loss", mode="min"), experiment / "sweep.yaml")
    optuna.create_study(storage=journal_storage(study_path(experiment)), study_name=STUDY_NAME)
    return experiment


def test_history_keeps_the_last_row_of_an_epoch_repeated_after_a_restart(tmp_path):
    experiment = _bare_experiment(tmp_path)
    rows = [{"epoch": 1, "val_loss": 3.0}, {"epoch": 2, "val_loss": 2.0},
            {"epoch": 2, "val_loss": 1.5}, {"epoch": 3, "val_loss": 1.0}]
    _write_trial(experiment, "a", rows, {"epochs": 3, "lr": 0.05})
    _write_trial(experiment, "b", [{"epoch": 1, "val_loss": 0.5}], {"epochs": 3, "lr": 0.2},
                 state=TrialState.RUNNING)
    loaded = load_experiment(experiment)
    history = loaded.history("a")
    assert list(history["epoch"]) == [1, 2, 3]
    assert list(history["val_loss"]) == [3.0, 1.5, 1.0]
    best = loaded.best()  # mode min
    assert (best.trial_id, best.value, best.checkpoint) == ("b", 0.5, None)
    assert best.config.lr == 0.2
    assert best.config.optimizer == "sgd"
    assert list(loaded.trials["trial_id"]) == ["b", "a"]
    assert list(loaded.trials["state"]) == ["RUNNING", "COMPLETE"]
    assert list(loaded.trials["epochs_run"]) == [1, 3]


def test_a_diverged_trial_is_marked_listed_last_and_never_best(tmp_path):
    experiment = _bare_experiment(tmp_path)  # val_loss, mode min: the worst value is +inf
    message = _write_diverged_trial(experiment, "blown")
    _write_trial(experiment, "fine", [{"epoch": e, "val_loss": 1.0 / e} for e in (1, 2, 3)],
                 {"epochs": 3, "lr": 0.01})
    _write_trial(experiment, "started", [], {"epochs": 3, "lr": 0.02}, state=TrialState.RUNNING)
    table = trials_table(experiment)
    assert list(table["trial_id"]) == ["fine", "blown", "started"]  # blown's 0.2 beats 0.33
    assert list(table["diverged"]) == [False, True, False]
    assert list(table["stopped_early"]) == [False, False, False]  # diverged, not stopped
    assert list(table["error"].fillna("")) == ["", message, ""]
    blown = table.iloc[1]
    assert (blown["epochs_run"], blown["best_val_loss"]) == (2, 0.2)
    assert blown["last_val_loss"] == float("inf")  # read back from the CSV as a number
    assert load_experiment(experiment).best().trial_id == "fine"


def test_with_only_a_diverged_trial_scored_there_is_no_best_and_status_and_analyze_say_why(
        tmp_path, capsys):
    """As the sweep's summary says no trial worked: analyze would retrain a learning rate
    that blew up, and status named it the best trial."""
    from carsweep.cli import main

    experiment = _bare_experiment(tmp_path)
    _write_diverged_trial(experiment, "blown")
    _write_trial(experiment, "started", [], {"epochs": 3, "lr": 0.02}, state=TrialState.RUNNING)
    why = ("no best trial: 1 diverged (loss NaN/inf: lower the learning rates) and no other "
           "trial has reported val_loss yet")
    assert load_experiment(experiment).best_row() is None
    with pytest.raises(UserError) as raised:
        load_experiment(experiment).best()
    assert str(raised.value) == f"{experiment}: {why}"
    assert main(["status", str(experiment)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == why
    assert main(["analyze", str(experiment)]) == 2
    assert capsys.readouterr().err == f"carsweep analyze: error: {experiment}: {why}\n"
    assert not (experiment / "analysis").exists()
    assert main(["export", str(experiment), "--out", str(tmp_path / "best.pt")]) == 2
    assert capsys.readouterr().err == f"carsweep export: error: {experiment}: {why}\n"
    assert not (tmp_path / "best.pt").exists()


def test_failures_and_the_error_of_a_failed_trial_come_from_its_error_file(tmp_path):
    experiment = _bare_experiment(tmp_path)
    _write_trial(experiment, "crashed", [{"epoch": 1, "val_loss": 2.0}], {"epochs": 3, "lr": 1.0},
                 state=TrialState.FAIL)
    (experiment / "trial_crashed" / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-01-01_10-00-00)\nTraceback ...\nNodeDiedError: gone\n"
        "Failure # 2 (occurred at 2026-01-01_10-01-00)\nTraceback ...\nValueError: bad batch\n")
    (row,) = trials_table(experiment).to_dict("records")
    assert (row["state"], row["failures"], row["error"]) == ("FAIL", 2, "ValueError: bad batch")


def test_a_sweep_from_before_the_study_file_is_read_from_its_trials_csv(tmp_path):
    experiment = tmp_path / "old"
    save_sweep(SweepConfig(name="old", metric="val_loss", mode="min"), experiment / "sweep.yaml")
    with pytest.raises(UserError, match="no study .study.journal. and no trials.csv"):
        load_experiment(experiment)
    (experiment / "trials.csv").write_text("trial_id,state,best_val_loss,trial_dir\n"
                                           "0042,TERMINATED,0.5,trial_0042\n")
    assert list(load_experiment(experiment).trials["trial_id"]) == ["0042"]


def test_best_without_any_reported_metric_is_a_user_error(tmp_path):
    experiment = _bare_experiment(tmp_path)
    _write_trial(experiment, "a", [], {"epochs": 3, "lr": 0.1}, state=TrialState.RUNNING)
    with pytest.raises(UserError, match="no trial has reported val_loss"):
        load_experiment(experiment).best()
    with pytest.raises(UserError, match="no trial 'zz'"):
        load_experiment(experiment).history("zz")


def test_empty_experiment_has_an_empty_table(tmp_path):
    table = trials_table(_bare_experiment(tmp_path))
    assert table.empty
    assert "best_val_loss" in table.columns


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_a_folder_that_is_not_an_experiment_is_one_line(tmp_path, make):
    with pytest.raises(UserError) as error:
        load_experiment(make(tmp_path))
    assert "\n" not in str(error.value)
    assert str(make(tmp_path)) in str(error.value)


NO_RAY_SCRIPT = BLOCK_RAY + """
from pathlib import Path

from carsweep.results import load_experiment
from carsweep.results.export import load_export
from carsweep.results.write_exports import export
import carsweep.analysis.predict

experiment = load_experiment(Path(sys.argv[1]))
export(experiment.folder, Path(sys.argv[2]))
print(experiment.best().trial_id, len(load_export(Path(sys.argv[2])).classes))
"""


@pytest.mark.slow
def test_results_export_and_predict_need_no_ray(finished_experiment, tmp_path):
    done = subprocess.run([sys.executable, "-c", NO_RAY_SCRIPT, str(finished_experiment),
                           str(tmp_path / "best.pt")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    best = load_experiment(finished_experiment).best().trial_id
    assert done.stdout.split() == [best, "4"]


def test_status_of_a_sweep_with_no_result_yet_lists_its_trials(tmp_path, capsys):
    from carsweep.cli import main

    experiment = _bare_experiment(tmp_path)
    _write_trial(experiment, "started", [], {"epochs": 3, "lr": 0.1}, state=TrialState.RUNNING)
    assert main(["status", str(experiment)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["started", "RUNNING", "0/3", "-"]
    assert lines[-2:] == ["1 of 8 trials: 1 running", "no trial has reported val_loss yet"]
