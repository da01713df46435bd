"""A sweep whose driver dies (SIGKILL: no handler runs, nothing is flushed on the way out) and
a sweep with a trial that blows up: what is kept, what is lost, what runs again.

Both run the CLI in a subprocess on a local Ray of one or two CPUs (loopback only).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from sweep_runs import (
    METRIC,
    epochs_by_trial,
    run_cli,
    start_cli,
    stop,
    sweep_command,
    wait_until,
    write_sweep,
)

from carsweep.search.searcher import load_study

pytestmark = pytest.mark.slow
EPOCHS = 3


def test_killed_driver_resumes_without_rerunning_finished_trials(prepared_dataset, tmp_path):
    config = write_sweep(tmp_path, "crashy", num_samples=3, max_concurrent_trials=1,
                         space={"epochs": EPOCHS})
    storage = tmp_path / "results"
    experiment = storage / "crashy"
    process = start_cli(sweep_command(config, prepared_dataset, storage, "--num-cpus", "1"),
                        tmp_path / "logs")
    try:
        def one_finished_and_one_midway():
            seen = epochs_by_trial(experiment)
            finished = [t for t, e in seen.items() if e[-1:] == [EPOCHS]]
            midway = [t for t, e in seen.items() if e and e[-1] < EPOCHS]
            # Tune snapshots its experiment state every ~10 s: a trial created since the last
            # snapshot is unknown to a resume (its folder stays; a new trial takes its place).
            known = saved_experiment_state(experiment)
            return seen if finished and midway and midway[0][len("trial_"):] in known else None

        wait_until(one_finished_and_one_midway, "a finished and a half-run trial", 240, process)
        # GCS, raylet, the running trial's worker; not Ray's monitoring agents, which notice
        # their raylet is gone only a minute or two later (they write nothing of ours).
        ray_processes = {pid: command_line(pid) for pid in descendants(process.pid)}
        ray_processes = {pid: c for pid, c in ray_processes.items() if "Agent" not in c}
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)
    assert process.returncode == -signal.SIGKILL
    assert any("raylet" in c for c in ray_processes.values())
    assert any("ImplicitFunc" in c for c in ray_processes.values())  # the running trial
    # They share the driver's fate: no orphaned trial writes into the experiment while it is
    # resumed.
    deadline = time.monotonic() + 60
    while (survivors := {pid: command_line(pid) for pid in ray_processes if alive(pid)}) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not survivors
    before = epochs_by_trial(experiment)
    finished_before = {t for t, e in before.items() if e[-1:] == [EPOCHS]}
    midway_before = {t: e for t, e in before.items() if e[-1] < EPOCHS}
    assert finished_before  # really killed mid-sweep
    assert midway_before
    assert not (experiment / "trials.csv").exists()  # the driver never got to write it

    resumed = run_cli([sys.executable, "-m", "carsweep", "resume", str(experiment),
                       "--num-cpus", "1"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == 3
    assert table["trial_id"].is_unique
    assert list(table["state"]) == ["TERMINATED"] * 3
    assert list(table["epochs_run"]) == [EPOCHS] * 3
    assert table[f"best_{METRIC}"].notna().all()
    after = epochs_by_trial(experiment)
    assert sorted(after) == sorted(table["trial_dir"])
    everything = list(range(1, EPOCHS + 1))
    for trial in finished_before:
        assert after[trial] == before[trial] == everything  # not trained again
    for trial, epochs in midway_before.items():
        assert after[trial][:len(epochs)] == epochs  # what it reported is kept
        assert sorted(set(after[trial])) == everything  # and it went on to the end
        assert after[trial].count(1) == 1  # from its checkpoint: epoch 1 not trained again
    study = load_study(experiment)  # the searcher's record agrees: three trials, no more
    assert len(study.trials) == 3


def test_a_trial_with_nan_loss_is_an_error_and_the_sweep_goes_on(prepared_dataset, tmp_path):
    # Start weights with a NaN in them make the loss NaN at the first batch. (A huge lr does
    # not do it reliably: lr is capped at 10, and BatchNorm keeps the loss finite, ~1e9.)
    broken = tmp_path / "nan-weights.pt"
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, broken)
    config = write_sweep(
        tmp_path, "nan", num_samples=2, max_failures=1,
        space={"weights": {"choice": ["none", str(broken)]}, "epochs": EPOCHS},
        searcher={"seed": 0, "n_startup_trials": 2,
                  "points_to_evaluate": [{"weights": str(broken)}, {"weights": "none"}]},
    )
    storage = tmp_path / "results"
    done = run_cli(sweep_command(config, prepared_dataset, storage, "--num-cpus", "1"),
                   timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # one trial worked: the sweep did
    assert "1 trial(s) failed; first error: " in done.stderr
    assert "training loss became nan by batch 1 of the epoch" in done.stderr

    table = pd.read_csv(storage / "nan" / "trials.csv", keep_default_na=False)
    assert len(table) == 2
    table = table.set_index("config/weights")
    blown, healthy = table.loc[str(broken)], table.loc["none"]
    assert blown["state"] == "ERROR"
    assert blown["error"].startswith("carsweep.trainable.loop.NonFiniteLossError: training "
                                     "loss became nan by batch 1 of the epoch")
    assert "check the start weights" in blown["error"]
    assert blown["epochs_run"] == 0  # stopped at its first batch, not after 3 epochs of NaN
    assert blown["failures"] == 2  # the first try and its one retry, each ended at once
    assert blown["best_checkpoint"] == ""
    assert healthy["state"] == "TERMINATED"
    assert healthy["epochs_run"] == EPOCHS
    assert healthy["error"] == ""
    assert 0 < float(healthy[f"best_{METRIC}"]) <= 1


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


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
