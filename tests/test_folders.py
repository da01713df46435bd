"""An output folder is built beside its place and renamed in: what a build killed outright
(kill -9, a machine that lost power) leaves beside it is removed by the next build of the
same output on that machine, and nothing of a build still running, nor the only copy left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from carsweep.cli import main
from carsweep.data.folders import building_folder
from carsweep.interrupts import InterruptedOnceWritten

# A build that writes a file into its folder, says so, then waits for its stdin to close (or
# kills itself outright first).
BUILD = """
import os, signal, sys
from pathlib import Path
from carsweep.data.folders import building_folder
with building_folder(Path(sys.argv[1])) as folder:
    (folder / "half.txt").write_text("half")
    print(folder, flush=True)
    if sys.argv[2] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()
"""


def _start_build(out: Path, fate: str) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", BUILD, str(out), fate], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return process, Path(process.stdout.readline().strip())


def test_the_next_build_removes_what_a_killed_build_left_and_keeps_a_running_ones(tmp_path):
    out = tmp_path / "data"
    killed, left = _start_build(out, "killed")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert left.name.startswith(f".data.building-{socket.gethostname()}-{killed.pid}-")
    running, building = _start_build(out, "running")
    try:
        with building_folder(out) as folder:
            (folder / "whole.txt").write_text("whole")
        assert not left.exists()
        assert (building / "half.txt").is_file()  # its process may still finish it
        assert [path.name for path in out.iterdir()] == ["whole.txt"]
    finally:
        running.stdin.close()
    assert running.wait(timeout=60) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]  # it replaced ours


def test_an_old_folder_a_killed_build_moved_aside_comes_back_and_is_removed_once_replaced(
        tmp_path):
    out = tmp_path / "data"
    aside = tmp_path / f".data.old-{socket.gethostname()}-{_a_finished_pid()}-x1"
    (aside / "old").mkdir(parents=True)
    (aside / "old" / "only-copy.txt").write_text("the user's data")
    with building_folder(tmp_path / "other"):
        pass
    assert (aside / "old" / "only-copy.txt").is_file()  # another output's: not touched
    with pytest.raises(ValueError, match="a build that fails"), building_folder(out):
        raise ValueError("a build that fails leaves `out` as it found it")
    assert (out / "only-copy.txt").read_text() == "the user's data"  # put back in place
    assert not aside.exists()
    leftover = tmp_path / f".data.old-{socket.gethostname()}-{_a_finished_pid()}-x2"
    (leftover / "old").mkdir(parents=True)  # killed after the new one took its place
    with building_folder(out) as folder:
        (folder / "new.txt").write_text("new")
    assert not leftover.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "other"]


def _a_finished_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_ctrl_c_between_the_two_renames_is_acted_on_once_the_new_folder_is_in(
        tmp_path, monkeypatch):
    """The old folder is moved aside, then the new one renamed in: a Ctrl-C in between used to
    leave no folder at all, the old one deleted with the folder that held it aside."""
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("the user's data")
    renames = []
    rename = os.replace

    def ctrl_c_after_the_first(source, target):
        rename(source, target)
        renames.append(Path(target).name)
        if len(renames) == 1:  # the old folder is aside, the new one not yet in
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr("carsweep.data.folders.os.replace", ctrl_c_after_the_first)
    with pythons_ctrl_c(), pytest.raises(InterruptedOnceWritten) as stopped, \
            building_folder(out) as folder:
        (folder / "new.txt").write_text("whole")
    assert stopped.value.path == out  # the command says its output is there
    assert renames == ["old", "data"]  # both renames ran; the interrupt came after
    assert [path.name for path in out.iterdir()] == ["new.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_a_command_ctrl_c_d_once_its_output_is_in_place_says_it_was_written(
        tmp_path, monkeypatch, capsys):
    """`synth` Ctrl-C'd as its new folder is renamed in: exit 130, and the one line says the
    folder is whole, where a bare "interrupted" would send the user to make it again."""
    out = tmp_path / "demo"
    rename = ctrl_c_at_each_rename(monkeypatch)
    small = ["--classes", "2", "--per-class", "2", "--size", "32"]
    with pythons_ctrl_c():
        code = main(["synth", str(out), *small])
    assert code == 130
    assert capsys.readouterr().err == f"carsweep synth: interrupted once {out} was written whole\n"
    monkeypatch.setattr("carsweep.data.folders.os.replace", rename)
    assert main(["synth", str(tmp_path / "uninterrupted"), *small]) == 0
    assert contents(out) == contents(tmp_path / "uninterrupted")  # whole, as it says


def test_a_ctrl_c_before_the_output_is_in_place_is_a_plain_interrupt(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("the user's data")

    def ctrl_c_halfway():
        with building_folder(out) as folder:
            (folder / "new.txt").write_text("half")
            signal.raise_signal(signal.SIGINT)

    with pythons_ctrl_c(), pytest.raises(KeyboardInterrupt) as stopped:
        ctrl_c_halfway()
    assert type(stopped.value) is KeyboardInterrupt  # says nothing was written
    assert [path.name for path in out.iterdir()] == ["old.txt"]


def test_a_stage_copied_on_after_it_lands_is_a_plain_interrupt(tmp_path, monkeypatch):
    """A bucket experiment's analysis is built on this machine and uploaded after: landed
    here, it is not yet written where the user reads it."""
    out = tmp_path / "analysis"

    def build_the_stage():
        with building_folder(out, final=False) as folder:
            (folder / "report.html").write_text("whole")

    ctrl_c_at_each_rename(monkeypatch)
    with pythons_ctrl_c(), pytest.raises(KeyboardInterrupt) as stopped:
        build_the_stage()
    assert type(stopped.value) is KeyboardInterrupt
    assert (out / "report.html").read_text() == "whole"


def ctrl_c_at_each_rename(monkeypatch) -> Callable[[str, str], None]:
    """building_folder's renames each followed by a Ctrl-C; returns the real os.replace."""
    rename = os.replace

    def rename_then_ctrl_c(source, target):
        rename(source, target)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr("carsweep.data.folders.os.replace", rename_then_ctrl_c)
    return rename


def contents(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in folder.rglob("*") if path.is_file()}


@contextmanager
def pythons_ctrl_c() -> Iterator[None]:
    """Python's own Ctrl-C handler, as in a command (an earlier test's Ray may have set
    another)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
