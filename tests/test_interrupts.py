"""Ctrl-C ends a command within seconds: exit 130, at most two lines on stderr, no traceback,
no `.building-*` or temporary file left, an existing output untouched, no process left.

Each command runs as `python -m carsweep ...` in a session of its own, and SIGINT goes to its
whole process group, as a terminal's Ctrl-C does (pool workers included)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sweep_runs import cli_env, linked_copy, sweep_command, wait_until, write_sweep

from carsweep.trainable.checkpoint import _save_raising_what_stopped_it
from carsweep.trainable.run_folder import METRICS_FILE


def _digest(folder: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _session_processes(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                continue
    return found


def _interrupt(command: list[str], cwd: Path, ready, delay: float = 0.0
               ) -> tuple[int, str, list[int]]:
    """(exit code, stderr, processes of its session left) of `command` Ctrl-C'd `delay` s
    after `ready(session)` held (a loaded machine imports at its own pace)."""
    process = subprocess.Popen([sys.executable, "-m", "carsweep", *command], cwd=cwd,
                               env=cli_env(), start_new_session=True, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stderr = process.communicate()[1]
        pytest.fail(f"{command[0]} still running 15 s after Ctrl-C; stderr:\n{stderr[-3000:]}")
    time.sleep(0.5)
    return process.returncode, stderr, _session_processes(process.pid)


def _pool_started(session: int) -> bool:
    return len(_session_processes(session)) >= 2


def _said(stderr: str) -> list[str]:
    """stderr's lines besides progress bars."""
    return [line for line in stderr.splitlines() if line.strip() and "img/s]" not in line]


@pytest.mark.parametrize(("command", "delay"), [
    ("synth-cars", 0.0), ("synth-cars", 0.3), ("synth-cars", 0.8),
    ("prepare-workers", 0.0), ("prepare-workers", 0.1),
])
def test_ctrl_c_is_exit_130_and_leaves_nothing(command, delay, synthetic_source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier output\n")
    argv = {"synth-cars": ["synth", str(out), "--preset", "cars", "--classes", "8",
                           "--per-class", "30", "--test-per-class", "5", "--workers", "2",
                           "--force"],
            "prepare-workers": ["prepare", str(synthetic_source), "--out", str(out),
                                "--workers", "2", "--force"]}[command]
    before = _digest(out)
    code, stderr, left = _interrupt(argv, tmp_path, _pool_started, delay)
    assert not list(tmp_path.glob(".*building-*"))
    assert left == []
    if code in (0, -signal.SIGINT):  # the work was done before the Ctrl-C (ended at exit)
        assert _digest(out) != before
        assert "Traceback" not in stderr
        return
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert len(_said(stderr)) <= 2, stderr
    interrupted = _digest(out)
    name = argv[0]
    said = "interrupted" if interrupted == before else f"interrupted once {out} was written whole"
    assert _said(stderr)[-1] == f"carsweep {name}: {said}", stderr
    if interrupted != before:  # the Ctrl-C came once the new output was in (held over the swap)
        done = subprocess.run([sys.executable, "-m", "carsweep", *argv], cwd=tmp_path,
                              env=cli_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert _digest(out) == interrupted  # what an uninterrupted run writes, byte for byte
    assert not list(tmp_path.glob(".*building-*"))
    assert left == []


class _InterruptedFile:
    """A file whose third write is a Ctrl-C."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt
        return len(data)

    def flush(self) -> None:
        pass


def test_ctrl_c_in_a_checkpoint_save_is_a_keyboard_interrupt_not_the_zip_writers_error():
    state = {"weights": torch.zeros(1000, 100), "more": torch.ones(1000, 100)}
    with pytest.raises(KeyboardInterrupt):
        _save_raising_what_stopped_it(state, _InterruptedFile())


def _marked_processes(mark: str) -> list[int]:
    """Processes whose environment holds `mark`: Ray's start in sessions of their own."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_ctrl_c_in_a_sweeps_ray_start_is_exit_130_and_leaves_no_ray_process(prepared_dataset,
                                                                         tmp_path):
    mark = f"carsweep-interrupt-test-{os.getpid()}-{time.monotonic_ns()}"
    config = write_sweep(tmp_path, "start")
    process = subprocess.Popen(
        sweep_command(config, prepared_dataset, tmp_path / "results"), cwd=tmp_path,
        env=cli_env() | {"CARSWEEP_TEST_MARK": mark}, start_new_session=True, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(_marked_processes(mark)) >= 3, "Ray's first processes", 60,
                   every=0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=45)
        time.sleep(3)  # Ray's agents notice their raylet is gone
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) <= 2, stderr
        assert _marked_processes(mark) == []
    finally:
        for pid in _marked_processes(mark):
            os.kill(pid, signal.SIGKILL)


SMALL_RUN = ["--set", "model=mobilenet_v3_small", "--set", "resize=32", "--set", "weights=none",
             "--set", "device=cpu", "--set", "num_workers=0", "--set", "batch_size=16",
             "--set", "augmentation=flip", "--set", "data_cache=off"]


def _epochs_written(run: Path) -> list[int]:
    return [int(row.split(",")[0]) for row in
            (run / METRICS_FILE).read_text().splitlines()[1:]]


@pytest.mark.parametrize("moment", ["before its first checkpoint", "after a checkpoint",
                                    "in the epoch after a checkpoint"])
def test_ctrl_c_in_train_is_exit_130_and_the_run_resumes_or_is_gone(moment, prepared_dataset,
                                                                     tmp_path):
    """A run stopped before its first checkpoint leaves no folder; one stopped later resumes
    from its last checkpoint and trains on to the epochs asked, each epoch once."""
    run = tmp_path / "run"
    ready = {"before its first checkpoint": lambda _: (run / "trial.yaml").is_file(),
             "after a checkpoint": lambda _: (run / "checkpoints" / "last").is_dir(),
             "in the epoch after a checkpoint": lambda _: (run / "checkpoints" / "last").is_dir(),
             }[moment]
    delay = 0.15 if moment == "in the epoch after a checkpoint" else 0.0
    code, stderr, left = _interrupt(["train", "--data", str(prepared_dataset), "--out", str(run),
                                     "--set", "epochs=500", *SMALL_RUN], tmp_path, ready, delay)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert len(_said(stderr)) <= 2, stderr
    assert left == []
    assert not list(tmp_path.glob(".*building-*"))
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes' temporary files
    if not (run / "checkpoints" / "last").is_dir():
        # the moment a save begins is not this test's to choose: "before" may have met one
        assert not run.exists(), sorted(run.rglob("*"))
        return
    epochs = len(_epochs_written(run)) + 1
    resumed = subprocess.run([sys.executable, "-m", "carsweep", "train", "--data",
                              str(prepared_dataset), "--out", str(run), "--resume",
                              "--set", f"epochs={epochs}"],
                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _epochs_written(run) == list(range(1, epochs + 1))


def test_ctrl_c_in_analyze_is_exit_130_and_keeps_the_previous_analysis(
        finished_experiment, finished_analysis, tmp_path):
    copy = linked_copy(finished_experiment, tmp_path / "experiment")
    shutil.copytree(finished_analysis, copy / "analysis")
    before = _digest(copy / "analysis")
    building = lambda _: bool(list(copy.glob(".analysis.building-*")))  # noqa: E731
    for delay in (0.0, 2.0):  # as its retrain starts, and into it
        code, stderr, left = _interrupt(["analyze", str(copy), "--epochs", "20",
                                         "--device", "cpu"], tmp_path, building, delay)
        assert code == 130, stderr
        assert "Traceback" not in stderr
        assert len(_said(stderr)) <= 2, stderr
        assert left == []
        assert not list(copy.glob(".analysis.*"))
        assert _digest(copy / "analysis") == before


def test_ctrl_c_while_the_cli_starts_is_exit_130_in_one_line(monkeypatch, capsys):
    import carsweep.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(carsweep.cli, "build_parser", interrupted)
    assert carsweep.cli.main(["synth", "x"]) == 130
    assert capsys.readouterr().err == "carsweep: interrupted\n"
