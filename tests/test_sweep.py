"""Real sweeps on tiny synthetic data: Ray Tune + Optuna + ASHA, on 2 local Ray CPUs.

Most assertions read the suite's one finished sweep (tests/conftest.py: starting Ray and the
trial processes is most of a sweep's time here); test_driver_crash.py interrupts and resumes
one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from no_ray import BLOCK_RAY, blocking
from sweep_runs import FINISHED_SWEEP, linked_copy, write_sweep
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from carsweep.cli import main
from carsweep.config.sweep import load_sweep, save_sweep
from carsweep.results import load_experiment, trials_table
from carsweep.search.trial import DatasetUnreachableError, readable_dataset

METRIC = FINISHED_SWEEP["metric"]  # val_loss, mode min (tests/sweep_runs.py says why)


@pytest.fixture(scope="module")
def swept(finished_experiment):
    """The suite's finished 4-trial ASHA sweep (tests/conftest.py): (its folder, its table)."""
    return finished_experiment, trials_table(finished_experiment)


@pytest.mark.slow
def test_asha_stops_some_trials_and_every_trial_is_in_the_table(swept):
    experiment, table = swept
    assert len(table) == FINISHED_SWEEP["num_samples"]
    assert set(table["state"]) == {"COMPLETE", "PRUNED"}
    assert table[f"best_{METRIC}"].notna().all()
    assert table["epochs_run"].between(1, 3).all()
    stopped = table[table["stopped_early"]]
    assert len(stopped) >= 1
    assert (stopped["epochs_run"] < 3).all()
    assert (stopped["state"] == "PRUNED").all()
    assert (table.loc[~table["stopped_early"], "epochs_run"] == 3).all()
    saved = pd.read_csv(experiment / "trials.csv")
    assert list(saved["trial_id"].astype(str)) == list(table["trial_id"])
    assert (experiment / "sweep.yaml").is_file()


@pytest.mark.slow
def test_best_trial_checkpoint_loads(swept):
    from carsweep.trainable import load_checkpoint

    experiment, table = swept
    best = table.iloc[0]
    assert best[f"best_{METRIC}"] == table[f"best_{METRIC}"].min()  # mode min
    loaded = load_checkpoint(experiment / best["best_checkpoint"])
    assert loaded is not None


@pytest.mark.slow
def test_tensorboard_scalars_and_hparams_for_every_trial(swept):
    experiment, table = swept
    for row in table.itertuples():
        events = EventAccumulator(str(experiment / row.trial_dir))
        events.Reload()
        values = events.Scalars(f"ray/tune/{METRIC}")
        assert [v.step for v in values] == list(range(1, row.epochs_run + 1))
        assert values[-1].value == pytest.approx(getattr(row, f"last_{METRIC}"))
        hparams = events.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in hparams  # stopped trials included
        assert "_hparams_/session_end_info" in hparams


@pytest.mark.slow
def test_tensorboard_hparams_view_lists_every_trial_with_latest_metric(swept):
    experiment, table = swept
    groups = hparams_session_groups(experiment)
    assert len(groups) == len(table)
    for _, row in table.iterrows():
        (group,) = [g for g in groups if g.name.endswith(row["trial_dir"])]
        metrics = {m.name.tag: m.value for m in group.metric_values}
        assert metrics["ray/tune/epoch"] == row["epochs_run"]  # latest epoch, stopped ones too
        assert metrics[f"ray/tune/{METRIC}"] == pytest.approx(row[f"last_{METRIC}"])
        assert group.hparams["lr"].number_value == pytest.approx(row["config/lr"])


def hparams_session_groups(logdir: Path) -> list:
    """What TensorBoard's HParams tab shows for `logdir`, read by its own backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider)
    )
    request = api_pb2.ListSessionGroupsRequest(
        experiment_name="", start_index=0, slice_size=100,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS,
                          api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING],
    )
    handler = list_session_groups.Handler(context.RequestContext(), backend, "", request)
    return list(handler.run().session_groups)


# Opens the study file with optuna alone (no carsweep, no Ray) and prints every trial.
READ_STUDY = BLOCK_RAY + """
import json, sys
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

storage = JournalStorage(JournalFileBackend(sys.argv[1]))
study = optuna.load_study(study_name="carsweep", storage=storage)
print(json.dumps({"names": optuna.get_all_study_names(storage), "trials": [
    {"trial_id": t.user_attrs["trial_id"], "state": t.state.name, "value": t.value,
     "params": t.params, "steps": {str(k): v for k, v in t.intermediate_values.items()}}
    for t in study.trials]}))
"""


@pytest.mark.slow
def test_the_study_file_opens_with_optuna_alone_and_matches_the_trials_table(swept):
    experiment, table = swept
    done = subprocess.run([sys.executable, "-c", READ_STUDY, str(experiment / "study.journal")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    read = json.loads(done.stdout)
    assert read["names"] == ["carsweep"]  # one study per experiment
    trials = {t["trial_id"]: t for t in read["trials"]}
    assert sorted(trials) == sorted(table["trial_id"])  # one study trial per Ray trial
    loaded = load_experiment(experiment)
    for _, row in table.iterrows():
        trial = trials[row["trial_id"]]
        history = loaded.history(row["trial_id"])
        # Every epoch the trial reported, as the study's intermediate values.
        assert trial["steps"] == {str(e): v for e, v in zip(history["epoch"], history[METRIC],
                                                             strict=True)}
        assert trial["state"] == row["state"]
        assert (trial["state"] == "PRUNED") == row["stopped_early"]  # ASHA's stops
        assert trial["params"]["lr"] == pytest.approx(row["config/lr"])
        if row["state"] == "COMPLETE":
            assert trial["value"] == row[f"last_{METRIC}"]
            assert len(trial["steps"]) == 3
        else:  # Optuna gives a pruned trial its last intermediate value
            assert trial["value"] == row[f"last_{METRIC}"]
            assert len(trial["steps"]) == row["epochs_run"] < 3


@pytest.mark.slow
def test_status_prints_table_and_best_and_writes_nothing(swept, capsys, monkeypatch):
    experiment, table = swept
    before = folder_listing(experiment)
    monkeypatch.chdir(experiment.parent)  # a relative path, as `make demo` gives it
    assert main(["status", experiment.name]) == 0
    out = capsys.readouterr().out
    best = table.iloc[0]
    # a loss, so a number (a share of images would read 93.75%)
    assert f"best trial: {best['trial_id']}  {METRIC} = {best[f'best_{METRIC}']:.4g}  " in out
    trials = FINISHED_SWEEP["num_samples"]
    assert f"{trials} of {trials} trials: " in out
    assert max(map(len, out.splitlines())) <= 110
    assert folder_listing(experiment) == before


def folder_listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


# `carsweep status` on a read-only bind mount of the experiment, in a mount namespace of its
# own (root ignores permission bits: only a read-only mount refuses root's writes), with
# neither Ray nor torch importable: status reads files, and answers in about a second.
STATUS = blocking("ray", "torch") + """
from carsweep.cli import main
sys.exit(main(["status", sys.argv[1]]))
"""
READ_ONLY_STATUS = """
set -e
mount --bind "$EXPERIMENT" "$EXPERIMENT"
mount -o remount,bind,ro "$EXPERIMENT"
if touch "$EXPERIMENT/probe" 2>/dev/null; then echo "the mount is writable" >&2; exit 3; fi
exec "$PYTHON" -c "$STATUS" "$EXPERIMENT"
"""


@pytest.mark.slow
def test_status_works_on_a_read_only_mount_without_ray_or_torch(swept):
    experiment, table = swept
    env = {**os.environ, "EXPERIMENT": str(experiment), "PYTHON": sys.executable,
           "STATUS": STATUS}
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           READ_ONLY_STATUS], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"best trial: {table.iloc[0]['trial_id']}" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--set", "bogus=1"], "unknown key `bogus`"),
        (["--set", "space.lr=-0.1"], "`space.lr` = -0.1"),
        (["--set", "space.optimizer={choice: []}"], "choice list is empty"),
        (["--set", "space.optimizer=lion"], "`space.optimizer` = 'lion'"),
        (["--set", "space.augmentation=flip+warp"], "unknown preset 'warp'"),
        (["--set", "resources.gpu=64"], "`resources.gpu` is 64 per trial"),
        (["--data", "no/such/dataset"], "no/such/dataset"),
    ],
)
def test_bad_sweep_stops_before_any_trial_and_writes_nothing(
    prepared_dataset, tmp_path, capsys, change, expected
):
    config = write_sweep(tmp_path, "bad")
    storage = tmp_path / "results"
    code = main(["sweep", str(config), "--data", str(prepared_dataset),
                 "--storage", str(storage), *change])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1
    assert not storage.exists()


def test_existing_experiment_is_not_overwritten(prepared_dataset, tmp_path, capsys):
    config = write_sweep(tmp_path, "taken")
    (tmp_path / "results" / "taken").mkdir(parents=True)
    (tmp_path / "results" / "taken" / "sweep.yaml").write_text("name: taken\n")
    code = main(["sweep", str(config), "--data", str(prepared_dataset),
                 "--storage", str(tmp_path / "results")])
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_node_without_the_dataset_fails_clearly(tmp_path):
    with pytest.raises(DatasetUnreachableError, match=r"cannot read the dataset .*every Ray node"):
        readable_dataset(str(tmp_path / "not-shared"))


@pytest.mark.slow
def test_resuming_a_copy_resumes_the_copy_and_never_touches_the_original(finished_experiment,
                                                                         tmp_path, monkeypatch,
                                                                         capsys):
    """sweep.yaml names where the sweep was launched: a resume follows the folder given. A
    copy of an ended sweep reads as ended, from the copy, and nothing changes anywhere; an
    unfinished one is restored by Tune from the copy (Tune restores a moved folder itself)."""
    import carsweep.search.tuner as tuner

    # Hard links: no room for the checkpoints twice, and carsweep replaces a file it writes
    # (a new inode), so a write into the copy would leave the original's link as it was.
    copy = shutil.copytree(finished_experiment, tmp_path / "elsewhere" / "renamed",
                           ignore=shutil.ignore_patterns("analysis"), copy_function=os.link)
    original = folder_listing(finished_experiment)
    copied = folder_listing(copy)
    started = []
    monkeypatch.setattr(tuner, "ray_session", lambda *args: started.append(args))
    assert main(["resume", str(copy), "--num-cpus", "2"]) == 0
    assert f"every trial of {copy} has ended: nothing to resume" in capsys.readouterr().out
    assert started == []
    assert folder_listing(finished_experiment) == original  # not a byte, not a time stamp
    assert folder_listing(copy) == copied
    (copy / "trials.csv").unlink()  # a driver killed after the last trial ended
    assert main(["resume", str(copy), "--num-cpus", "2"]) == 0
    assert "nothing to resume, trials.csv brought up to date" in capsys.readouterr().out
    assert (copy / "trials.csv").read_text() == (finished_experiment / "trials.csv").read_text()

    class ResumedHere(Exception):
        pass

    def resumed_at(experiment):
        raise ResumedHere(experiment)

    monkeypatch.setattr(tuner, "_ended_sweep", lambda config, experiment: None)
    monkeypatch.setattr(tuner, "check_storage_writable", resumed_at)  # the first write's check
    with pytest.raises(ResumedHere) as resumed:
        main(["resume", str(copy), "--num-cpus", "2"])
    assert resumed.value.args == (copy,)  # an unfinished sweep would be resumed in the copy


def test_resume_with_changed_settings_is_refused_in_one_line_naming_them(finished_experiment,
                                                                          capsys):
    """Tune's restore drops what changed silently; only the cluster and places may change."""
    before = folder_listing(finished_experiment)
    args = ["sweep", str(finished_experiment / "sweep.yaml"), "--resume", "--storage",
            str(finished_experiment.parent), "--set", "num_samples=9",
            "--set", "asha.grace_period=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"carsweep sweep: error: {finished_experiment}: a resume continues "
                          "the sweep as it was launched, but these settings differ from its "
                          "sweep.yaml: num_samples (4 -> 9); asha.grace_period (1 -> 2); ")
    assert folder_listing(finished_experiment) == before


def test_resume_needs_an_experiment_folder(prepared_dataset, tmp_path, capsys):
    assert main(["resume", str(tmp_path / "nothing")]) == 2
    assert "no sweep.yaml" in capsys.readouterr().err
    assert main(["sweep", str(write_sweep(tmp_path, "fresh")), "--resume", "--data",
                 str(prepared_dataset), "--storage", str(tmp_path / "results")]) == 2
    assert "no sweep to resume" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_resume_files_cut_short_by_a_dead_driver_are_one_line_naming_the_whole_copies(
        finished_experiment, tmp_path, monkeypatch, capsys):
    """Tune's driver copies tuner.pkl and its state snapshots into the experiment with every
    snapshot, truncating each first: one killed mid-copy leaves them cut short. A copy of the
    finished experiment (its sweep.yaml naming the copy's folder) with tuner.pkl and the
    newest experiment state cut in half: resume names both in one line, and the staging folder
    on this machine where Tune's driver kept whole copies; nothing is written."""
    experiment = linked_copy(finished_experiment, tmp_path / "copy" / "finished")
    config = load_sweep(experiment / "sweep.yaml")
    (experiment / "sweep.yaml").unlink()  # the link: the finished experiment stays as it is
    save_sweep(config.model_copy(update={"storage_path": str(experiment.parent)}),
               experiment / "sweep.yaml")
    state = sorted(experiment.glob("experiment_state-*.json"))[-1]
    ray_tmp = tmp_path / "ray"  # Ray's temp folder (RAY_TMPDIR/ray), where the driver staged
    staged = ray_tmp / "ray/session_1/artifacts/2026-12-01_00-00-00/finished/driver_artifacts"
    staged.mkdir(parents=True)
    for path in (experiment / "tuner.pkl", state):
        whole = path.read_bytes()
        (staged / path.name).write_bytes(whole)
        path.unlink()  # the link: the finished experiment itself stays whole
        path.write_bytes(whole[:len(whole) // 2])
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    before = folder_listing(experiment)

    assert main(["resume", str(experiment), "--num-cpus", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"carsweep resume: error: {experiment}: tuner.pkl, {state.name} "
                          "cut short (the sweep's driver died while Ray copied them there)"), err
    assert err.rstrip().endswith(f"whole copies are in {staged}: copy them over, then resume "
                                 "again"), err
    assert folder_listing(experiment) == before

    (staged / state.name).write_bytes(b"")  # a copy that is cut too is not offered
    assert main(["resume", str(experiment), "--num-cpus", "1"]) == 2
    assert "whole copies" not in capsys.readouterr().err
