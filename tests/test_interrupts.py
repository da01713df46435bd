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
from sweep_runs import cli_env

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
    """(exit code, stderr, processes of its session left) of `command` Ctrl-C'd after `delay` s."""
    process = subprocess.Popen([sys.executable, "-m", "carsweep", *command], cwd=cwd,
                               env=cli_env(), start_new_session=True, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    ("synth-cars", 1.5), ("synth-cars", 2.0), ("synth-cars", 2.5),
    ("prepare-workers", 1.0), ("prepare-workers", 1.3),
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
    if code == 0:  # it finished before the Ctrl-C (a loaded machine): the output is whole
        assert _digest(out) != before
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
