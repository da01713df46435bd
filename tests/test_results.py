"""The results store: an experiment folder read back without Ray (trials, history, best trial)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from no_ray import BLOCK_RAY

from carsweep.config.sweep import SweepConfig, save_sweep
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.results import load_experiment, rebuild_trials_table
from carsweep.trainable import build_model, load_checkpoint

METRIC = "val_top1"


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
    assert best.value == table[f"best_{METRIC}"].max()
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
    assert experiment.sweep.metric == METRIC
    assert experiment.sweep.num_samples == 4


@pytest.mark.slow
def test_history_has_one_row_per_epoch_matching_the_table(finished_experiment):
    experiment = load_experiment(finished_experiment)
    for row in experiment.trials.itertuples():
        history = experiment.history(row.trial_id)
        assert list(history["epoch"]) == list(range(1, row.epochs_run + 1))
        assert history[METRIC].iloc[-1] == getattr(row, f"last_{METRIC}")
        assert history[METRIC].max() == getattr(row, f"best_{METRIC}")
    stopped = experiment.trials[experiment.trials["stopped_early"]]
    assert len(stopped) >= 1
    assert (stopped["epochs_run"] < 3).all()


@pytest.mark.slow
def test_missing_trials_csv_is_rebuilt_equal_to_the_saved_one(finished_experiment, tmp_path):
    copy = _copy_without(finished_experiment, tmp_path / "killed", "trials.csv")
    rebuilt = load_experiment(copy).trials
    saved = load_experiment(finished_experiment).trials
    pd.testing.assert_frame_equal(rebuilt, saved)
    assert load_experiment(copy).best().trial_id == load_experiment(finished_experiment
                                                                     ).best().trial_id


@pytest.mark.slow
def test_rebuilt_from_trial_folders_alone_when_ray_wrote_no_state(finished_experiment, tmp_path):
    copy = _copy_without(finished_experiment, tmp_path / "early", "trials.csv",
                         "experiment_state-*.json")
    rebuilt = load_experiment(copy).trials.set_index("trial_id").sort_index()
    saved = load_experiment(finished_experiment).trials.set_index("trial_id").sort_index()
    same = ["epochs_run", "planned_epochs", f"last_{METRIC}", f"best_{METRIC}",
            "best_checkpoint", "config/lr", "config/optimizer"]
    pd.testing.assert_frame_equal(rebuilt[same], saved[same])
    # Without Ray's state a trial ASHA stopped cannot be told from one killed mid-run.
    finished = saved["epochs_run"] == saved["planned_epochs"]
    assert (rebuilt.loc[finished, "state"] == "TERMINATED").all()
    assert (rebuilt.loc[~finished, "state"] == "UNKNOWN").all()


def _write_trial(experiment: Path, trial_id: str, rows: list[dict], params: dict) -> None:
    folder = experiment / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _bare_experiment(tmp_path: Path) -> Path:
    experiment = tmp_path / "exp"
    save_sweep(SweepConfig(name="exp", metric="val_loss", mode="min"), experiment / "sweep.yaml")
    return experiment


def test_history_keeps_the_last_row_of_an_epoch_repeated_after_a_restart(tmp_path):
    experiment = _bare_experiment(tmp_path)
    rows = [{"epoch": 1, "val_loss": 3.0}, {"epoch": 2, "val_loss": 2.0},
            {"epoch": 2, "val_loss": 1.5}, {"epoch": 3, "val_loss": 1.0}]
    _write_trial(experiment, "a", rows, {"epochs": 3, "lr": 0.05})
    _write_trial(experiment, "b", [{"epoch": 1, "val_loss": 0.5}], {"epochs": 3, "lr": 0.2})
    loaded = load_experiment(experiment)
    history = loaded.history("a")
    assert list(history["epoch"]) == [1, 2, 3]
    assert list(history["val_loss"]) == [3.0, 1.5, 1.0]
    best = loaded.best()  # mode min
    assert (best.trial_id, best.value, best.checkpoint) == ("b", 0.5, None)
    assert best.config.lr == 0.2
    assert best.config.optimizer == "sgd"
    assert list(loaded.trials["trial_id"]) == ["b", "a"]
    assert list(loaded.trials["state"]) == ["UNKNOWN", "TERMINATED"]


def test_a_diverged_trial_is_marked_listed_last_and_never_best(tmp_path):
    experiment = _bare_experiment(tmp_path)  # val_loss, mode min: the worst value is +inf
    message = "training loss became nan by batch 3 of the epoch (lr 9); the run stopped"
    _write_trial(experiment, "blown", [
        {"epoch": 1, "val_loss": 0.2},
        {"epoch": 2, "val_loss": float("inf"), "diverged": True, "diverged_message": message},
    ], {"epochs": 3, "lr": 9.0})
    _write_trial(experiment, "fine", [{"epoch": e, "val_loss": 1.0 / e} for e in (1, 2, 3)],
                 {"epochs": 3, "lr": 0.01})
    _write_trial(experiment, "started", [], {"epochs": 3, "lr": 0.02})
    table = rebuild_trials_table(experiment, "val_loss", "min")
    assert list(table["trial_id"]) == ["fine", "blown", "started"]  # blown's 0.2 beats 0.33
    assert list(table["diverged"]) == [False, True, False]
    assert list(table["error"].fillna("")) == ["", message, ""]
    blown = table.iloc[1]
    assert (blown["epochs_run"], blown["best_val_loss"]) == (2, 0.2)
    assert blown["last_val_loss"] == float("inf")  # read back from the CSV as a number
    assert load_experiment(experiment).best().trial_id == "fine"


def test_best_without_any_reported_metric_is_a_user_error(tmp_path):
    experiment = _bare_experiment(tmp_path)
    _write_trial(experiment, "a", [], {"epochs": 3})
    with pytest.raises(UserError, match="no trial has reported val_loss"):
        load_experiment(experiment).best()
    with pytest.raises(UserError, match="no trial 'zz'"):
        load_experiment(experiment).history("zz")


def test_empty_experiment_has_an_empty_table(tmp_path):
    table = rebuild_trials_table(_bare_experiment(tmp_path), "val_loss", "min")
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
from carsweep.results.export import export, load_export
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
