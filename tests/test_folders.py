"""An output folder is built beside its place and renamed in: what a build killed outright
(kill -9, a machine that lost power) leaves beside it is removed by the next build of the
same output on that machine, and nothing of a build still running, nor the only copy left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from carsweep.data.folders import building_folder

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
    # Python's own Ctrl-C handler, as in a command (an earlier test's Ray may have set another)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), building_folder(out) as folder:
            (folder / "new.txt").write_text("whole")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert renames == ["old", "data"]  # both renames ran; the interrupt came after
    assert [path.name for path in out.iterdir()] == ["new.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]
