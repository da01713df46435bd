"""A sweep whose driver is stopped (Ctrl-C) and then dies (SIGKILL: no handler runs, nothing
is flushed on the way out), and a sweep whose trials blow up (NaN loss): what is kept, what is
lost, what runs again.

Both sweep through the CLI in a subprocess on a local Ray of one to three CPUs (loopback only);
the diverged sweep's resume (which must run nothing) runs in the test's own process.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState
from sweep_runs import (
    METRIC,
    epochs_by_trial,
    output,
    process_exited,
    result_rows,
    run_cli,
    start_cli,
    stop,
    sweep_command,
    wait_until,
    write_sweep,
)

from carsweep.cli import main
from carsweep.cli.sweep import report_outcome
from carsweep.results import experiment_sweep, load_experiment, open_study, trials_table
from carsweep.results.store import best_trial_row, read_trials_csv
from carsweep.search.resume_files import cut_short_resume_files
from carsweep.search.tuner import SweepOutcome

pytestmark = pytest.mark.slow
EPOCHS = 3
# The stopped-then-killed sweep's trials run more epochs, so that one can be paused with epochs
# to spare: Tune's trainable runs up to an epoch ahead of what its driver has recorded, and the
# experiment folder is a copy of that record made at each step of Tune's loop.
CRASH_EPOCHS = 5


def test_a_sweep_stopped_by_ctrl_c_then_killed_resumes_without_rerunning_finished_trials(
        prepared_dataset, tmp_path):
    """Ctrl-C (SIGINT) once a trial has finished: Tune saves its state, the CLI exits 130 with
    the command to go on as its last line. That command, run as printed, is killed (SIGKILL,
    between two of Tune's copies into the experiment) once one more trial has finished and
    another is half-run (paused there, so that a fast machine cannot finish it first, and let
    go once the driver is dead). A last resume, of the folder moved elsewhere, finishes the
    sweep there: no finished trial trains again, a half-run one goes on from its checkpoint,
    every epoch a trial reported is kept, and the table and the study hold each trial once."""
    config = write_sweep(tmp_path, "stopped", num_samples=3, max_concurrent_trials=1,
                         space={"epochs": CRASH_EPOCHS})
    storage = tmp_path / "results"
    experiment = storage / "stopped"

    process = start_cli(sweep_command(config, prepared_dataset, storage, "--num-cpus", "1"),
                        tmp_path / "logs-ctrl-c", live_results=True)
    try:
        wait_until(lambda: finished_trials(experiment), "a finished trial", 240, process,
                   every=0.05)  # the next trial's process takes seconds to start: none ran
        process.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
        process.wait(timeout=60)
    finally:
        stop(process)
    stderr = output(process)[1]
    assert process.returncode == 130, stderr[-2000:]
    printed = stderr.rstrip().splitlines()[-1]  # the last line: the command to paste
    assert printed == f"  carsweep resume {experiment} --num-cpus 1"
    assert "Tuner.restore" not in stderr  # Tune's own hint names an API users never call
    at_ctrl_c = epochs_by_trial(experiment)
    finished_at_ctrl_c = finished_trials(experiment)
    # stopped after one trial: the next not yet created, or short of its epochs (a started one
    # may have none); two are left to finish one and pause the other
    assert len(finished_at_ctrl_c) == 1, at_ctrl_c
    table_at_ctrl_c = (experiment / "trials.csv").read_text()  # Tune returned: it was written

    process = start_cli([sys.executable, "-m", *shlex.split(printed)],  # run as printed
                        tmp_path / "logs-killed", live_results=True)
    paused = None
    try:
        paused, paused_pid = pause_a_trial_midway(experiment, finished_at_ctrl_c, process)
        # A trial created since Tune's last experiment state snapshot is unknown to a resume
        # (its folder stays; a new trial takes its place). Here it snapshots at every step.
        wait_until(lambda: paused[len("trial_"):] in saved_experiment_state(experiment),
                   f"Tune's experiment state to know {paused}", 60, process)
        # GCS, raylet, the running trial's worker; not Ray's monitoring agents, which notice
        # their raylet is gone only a minute or two later (they write nothing of ours).
        ray_processes = {pid: command_line(pid) for pid in descendants(process.pid)}
        ray_processes = {pid: c for pid, c in ray_processes.items() if "Agent" not in c}
        kill_between_copies(process, experiment)
        process.wait(timeout=30)
    finally:
        stop(process)
        if paused:  # it goes on as if never paused, and finds its Ray gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(paused_pid, signal.SIGCONT)
    assert process.returncode == -signal.SIGKILL
    assert any("raylet" in c for c in ray_processes.values())
    assert any("ImplicitFunc" in c for c in ray_processes.values())  # the running trial
    # They share the driver's fate: no orphaned trial writes into the experiment while it is
    # resumed.
    deadline = time.monotonic() + 60
    while (survivors := {pid: command_line(pid) for pid in ray_processes
                         if not process_exited(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not survivors
    before = epochs_by_trial(experiment)
    finished_before = finished_trials(experiment)
    midway_before = {t: e for t, e in before.items() if e[-1] < CRASH_EPOCHS}
    assert len(finished_before) == 2  # really killed mid-sweep
    assert midway_before
    assert (experiment / "trials.csv").read_text() == table_at_ctrl_c  # the killed one: never

    # Moved before the last resume (sweep.yaml still names where it was launched): it is
    # resumed where it is now, and nothing appears where it was.
    launched_at, experiment = experiment, storage.parent / "moved" / "renamed"
    experiment.parent.mkdir()
    os.rename(launched_at, experiment)
    resumed = run_cli([sys.executable, "-m", "carsweep", "resume", str(experiment),
                       "--num-cpus", "1"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not launched_at.exists()

    table = read_trials_csv((experiment / "trials.csv").read_text())
    assert len(table) == 3
    assert table["trial_id"].is_unique
    assert list(table["state"]) == ["COMPLETE"] * 3
    assert list(table["epochs_run"]) == [CRASH_EPOCHS] * 3
    assert table[f"best_{METRIC}"].notna().all()
    after = epochs_by_trial(experiment)
    assert sorted(after) == sorted(table["trial_dir"])
    everything = list(range(1, CRASH_EPOCHS + 1))
    for trial in finished_at_ctrl_c:
        assert after[trial] == at_ctrl_c[trial] == everything  # not trained again
    for trial, epochs in at_ctrl_c.items():  # stopped by Ctrl-C after an epoch's checkpoint:
        assert after[trial][:len(epochs)] == epochs  # went on from it, nothing trained twice
    for trial in finished_before:
        assert after[trial] == before[trial] == everything  # not trained again
    for trial, epochs in midway_before.items():
        assert after[trial][:len(epochs)] == epochs  # what it reported is kept
        assert sorted(set(after[trial])) == everything  # and it went on to the end
        assert after[trial].count(1) == 1  # from its checkpoint: epoch 1 not trained again
    # The study on disk agrees: one trial per Ray trial, none lost or doubled, each with
    # every epoch its trial reported (the value of its last run of an epoch).
    study = open_study(experiment)
    assert sorted(t.user_attrs["trial_id"] for t in study.trials) == sorted(table["trial_id"])
    loaded = load_experiment(experiment)
    for trial in study.trials:
        history = loaded.history(trial.user_attrs["trial_id"])
        assert trial.state == TrialState.COMPLETE
        assert trial.intermediate_values == dict(zip(history["epoch"], history[METRIC],
                                                     strict=True))
        assert trial.value == trial.intermediate_values[CRASH_EPOCHS]

    # Resumed once more, the ended sweep says so: no Ray started, nothing rewritten.
    files = {path: path.read_bytes() for path in experiment.rglob("*") if path.is_file()}
    again = run_cli([sys.executable, "-m", "carsweep", "resume", str(experiment)], timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"every trial of {experiment} has ended: nothing to resume" in again.stdout
    assert "Traceback" not in again.stderr
    assert "interrupted" not in again.stderr
    assert {path: path.read_bytes() for path in experiment.rglob("*")
            if path.is_file()} == files


def finished_trials(experiment: Path) -> list[str]:
    """The trials that have reported their last epoch."""
    return [trial for trial, epochs in epochs_by_trial(experiment).items()
            if epochs[-1:] == [CRASH_EPOCHS]]


# MobileNetV3-small (TINY_SPACE's) trained by sgd at lr 9-10 with Nesterov momentum, no decay
# and batch 8: on this data the training loss is NaN within the first epochs (which one
# depends on the model's initial weights, so the test reads it from each trial). adam at its
# own lr range trains normally. The three trials are the points to evaluate.
DIVERGING = {
    "optimizer": {"choice": ["sgd", "adam"]},
    "lr": [{"choice": [9.0, 10.0], "when": {"optimizer": ["sgd"]}},
           {"loguniform": [1.0e-4, 1.0e-2], "when": {"optimizer": ["adam"]}}],
    "nesterov": True, "lr_schedule": "constant", "warmup_epochs": 1, "batch_size": 8,
    "epochs": EPOCHS,
}
POINTS = [{"optimizer": "sgd", "lr": 10.0}, {"optimizer": "adam", "lr": 1.0e-3},
          {"optimizer": "sgd", "lr": 9.0}]


def test_diverged_trials_end_once_and_teach_the_searcher(prepared_dataset, tmp_path, capsys):
    # All three at once (3 logical CPUs on this machine's 2 cores): one wave of trial
    # processes, not two.
    config = write_sweep(tmp_path, "blowup", num_samples=3, max_concurrent_trials=3,
                         max_failures=2, space=DIVERGING,
                         searcher={"seed": 0, "n_startup_trials": 3, "points_to_evaluate": POINTS})
    storage = tmp_path / "results"
    experiment = storage / "blowup"
    done = run_cli(sweep_command(config, prepared_dataset, storage, "--num-cpus", "3"),
                   timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]  # the adam trial worked: the sweep did
    assert "Traceback" not in done.stdout + done.stderr
    assert "2 trial(s) diverged (loss NaN/inf) and were not retried: " in done.stderr

    table = read_trials_csv((experiment / "trials.csv").read_text())
    assert not [c for c in table.columns if "|" in c]  # branch names never reach Ray
    assert list(table["config/optimizer"]) == ["adam", "sgd", "sgd"]  # diverged ones last
    healthy, blown = table.iloc[0], table.iloc[1:]
    assert (healthy["diverged"], healthy["epochs_run"]) == (False, EPOCHS)
    assert sorted(blown["config/lr"]) == [9.0, 10.0]
    assert list(blown["diverged"]) == [True, True]
    assert list(blown["state"]) == ["PRUNED"] * 2  # ended by a report, not an error
    assert list(blown["failures"]) == [0, 0]  # max_failures 2, and not one retry
    assert all(1 <= epoch <= EPOCHS for epoch in blown["epochs_run"])  # the one it diverged in
    assert list(blown[f"last_{METRIC}"]) == [0.0, 0.0]  # the worst value for mode max
    assert all(e.startswith("training loss became nan by batch ") for e in blown["error"])
    assert list(table["trial_id"]) == list(load_experiment(experiment).trials["trial_id"])
    pd.testing.assert_frame_equal(trials_table(experiment), table)  # read again: the same
    for row in blown.itertuples():
        line = f"{row.trial_dir} diverged at epoch {row.epochs_run}: {row.error} (not retried)"
        assert done.stdout.count(line) == 1, done.stdout[-3000:]
    trained = epochs_by_trial(experiment)
    for row in table.itertuples():  # each epoch once, up to its end or its divergence
        assert trained[row.trial_dir] == list(range(1, row.epochs_run + 1))

    study = open_study(experiment)
    by_lr = {t.params.get("lr|sgd", t.params.get("lr|adam")): t for t in study.trials}
    assert set(by_lr) == {10.0, 1.0e-3, 9.0}  # each range under its own name
    assert by_lr[1.0e-3].state == TrialState.COMPLETE
    for lr, error, epoch in zip(blown["config/lr"], blown["error"], blown["epochs_run"],
                                strict=True):
        told = by_lr[lr]
        assert told.state == TrialState.PRUNED
        assert told.constraints == {"diverged": 1.0}
        assert told.user_attrs == {"diverged": error, "trial_id": told_id(table, lr)}
        assert max(told.intermediate_values) == epoch
        assert told.intermediate_values[epoch] == 0.0

    # Had adam diverged too, no trial would have worked: the console names no best trial.
    only_blown = blown.reset_index(drop=True)
    assert best_trial_row(only_blown, METRIC, "max") is None
    capsys.readouterr()
    outcome = SweepOutcome(experiment=experiment, trials=2, best_trial=None, best_value=None,
                           table=only_blown)
    assert report_outcome(experiment_sweep(experiment), outcome) == 1
    out, err = capsys.readouterr()
    assert "best trial" not in out
    assert "analyze" not in out
    assert err.splitlines() == [
        "carsweep sweep: no trial worked, so there is no best trial to analyze: 2 diverged "
        "(loss NaN/inf: lower the learning rates)"]

    assert main(["resume", str(experiment), "--num-cpus", "3"]) == 0, \
        capsys.readouterr().err[-3000:]
    assert "diverged at epoch" not in capsys.readouterr().out  # nothing ran again
    assert epochs_by_trial(experiment) == trained
    assert len(open_study(experiment).trials) == 3


def told_id(table: pd.DataFrame, lr: float) -> str:
    return table.loc[table["config/lr"] == lr, "trial_id"].item()


def pause_a_trial_midway(experiment: Path, finished_earlier: list[str],
                         process: subprocess.Popen) -> tuple[str, int]:
    """Once one more trial than `finished_earlier` has finished and the next has reported an
    epoch, stop that trial's process (SIGSTOP) so that it stays half-run however fast this
    machine trains: (its folder name, its pid). It is stopped the moment the experiment folder
    shows its first epoch, which may lag what it has done: CRASH_EPOCHS leaves it epochs to
    spare (with 3, one was done before it was stopped, once in CI)."""
    def one_more_finished_and_one_midway():
        midway = [t for t, e in epochs_by_trial(experiment).items() if e and e[-1] < CRASH_EPOCHS]
        more = len(finished_trials(experiment)) > len(finished_earlier)
        return midway[0] if more and midway else None

    trial = wait_until(one_more_finished_and_one_midway, "one more finished and a half-run "
                       "trial", 300, process, every=0.02)  # an epoch can take a fraction of 1 s
    pid = result_rows(experiment)[trial][-1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    time.sleep(1)  # what it reported before it stopped reaches the experiment folder
    if epochs_by_trial(experiment)[trial][-1] == CRASH_EPOCHS:
        os.kill(pid, signal.SIGCONT)
        raise AssertionError(f"{trial} finished before it could be paused")
    return trial, pid


def kill_between_copies(process: subprocess.Popen, experiment: Path) -> None:
    """SIGKILL the driver while Tune is not copying its files into the experiment: one killed
    mid-copy leaves them cut short, which no resume can use (test_sweep.py has its one-line
    refusal). The driver is stopped (SIGSTOP) first, killed once every file a resume reads and
    every result.json there is whole, else let go on for a moment and stopped again."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        os.kill(process.pid, signal.SIGSTOP)
        results = [path.read_bytes() for path in experiment.glob("trial_*/result.json")]
        if not cut_short_resume_files(experiment) and all(r.endswith(b"\n") for r in results):
            os.kill(process.pid, signal.SIGKILL)
            return
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the driver was copying its files every time it was stopped")


def saved_experiment_state(experiment: Path) -> str:
    """The text of Tune's newest experiment state snapshot ("" before the first)."""
    snapshots = sorted(experiment.glob("experiment_state-*.json"))
    try:
        return snapshots[-1].read_text() if snapshots else ""
    except OSError:
        return ""


def descendants(pid: int) -> set[int]:
    """Every process below `pid` in the process tree, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""
