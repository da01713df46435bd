"""Ctrl-C ends a command within seconds: exit 130, at most two lines on stderr, no traceback,
no `.building-*` or temporary file left, an existing output untouched, no process left.

Each command runs as `python -m carsweep ...` in a session of its own, and SIGINT goes to its
whole process group, as a terminal's Ctrl-C does (pool workers included)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sweep_runs import cli_env, sweep_command, wait_until, write_sweep

from carsweep.trainable.checkpoint import _save_raising_what_stopped_it


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


def _interrupt(command: list[str], delay: float, cwd: Path) -> tuple[int, str, list[int]]:
    """(exit code, stderr, processes of its session left) of `command` Ctrl-C'd `delay` s
    after its worker pool started (a loaded machine imports at its own pace)."""
    process = subprocess.Popen([sys.executable, "-m", "carsweep", *command], cwd=cwd,
                               env=cli_env(), start_new_session=True, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while (len(_session_processes(process.pid)) < 2 and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{command[0]} still running 15 s after Ctrl-C")
    time.sleep(0.5)
    return process.returncode, stderr, _session_processes(process.pid)


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
    code, stderr, left = _interrupt(argv, delay, tmp_path)
    assert not list(tmp_path.glob(".*building-*"))
    assert left == []
    if code in (0, -signal.SIGINT):  # the work was done before the Ctrl-C (ended at exit)
        assert _digest(out) != before
        assert "Traceback" not in stderr
        return
    assert code == 130, stderr
    assert "Traceback" not in stderr
    said = [line for line in stderr.splitlines() if line.strip() and "img/s]" not in line]
    assert len(said) <= 2, stderr  # besides the progress bar's lines
    assert _digest(out) == before
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
