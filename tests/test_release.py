"""A trial leaves nothing behind for the next one: its process has exited, its objects are freed.

On a GPU, a process that exits hands back all its CUDA memory, so on the CPU the processes are
checked: every trial of a sequential sweep ran in its own process (the pid Ray records with
each result), each one was gone by the time the next trial reported its first epoch, and none
is left after the sweep. That sweep is the demo's, in tests/test_console.py, with the watcher
below. Inside a trial, `gpu_memory_released` frees what a failed run held (an exception's
frames keep the model alive otherwise).
"""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from pathlib import Path

import pytest

from carsweep.search.release import gpu_memory_released


def process_exited(pid: int) -> bool:
    """True when `pid` is gone or a zombie (exited, only its exit status left to collect)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def first_rows(experiment: Path) -> dict[str, dict]:
    """The first complete result row of every trial that has reported, by trial folder."""
    rows = {}
    for result in experiment.glob("trial_*/result.json"):
        line = result.read_text().split("\n", 1)[0]
        try:
            rows[result.parent.name] = json.loads(line)
        except json.JSONDecodeError:  # being written: the next look reads it whole
            continue
    return rows


class FirstReportWatcher(threading.Thread):
    """Polls the experiment folder; when a trial's first result appears, notes which pids of
    the trials that reported before it were still running at that moment."""

    def __init__(self, experiment: Path) -> None:
        super().__init__(daemon=True)
        self.experiment = experiment
        self.order: list[tuple[str, int]] = []  # (trial, pid) in first-report order
        self.alive_at_report: dict[str, list[int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for trial, row in first_rows(self.experiment).items():
                if trial not in self.alive_at_report:
                    earlier = [pid for _, pid in self.order]
                    self.alive_at_report[trial] = [p for p in earlier if not process_exited(p)]
                    self.order.append((trial, row["pid"]))
            time.sleep(0.02)


class Held:
    """Stands for a model or a CUDA tensor a trial holds: weakly referenceable."""


def train_that_fails(keep: list[weakref.ref]) -> None:
    model = Held()
    keep.append(weakref.ref(model))
    raise RuntimeError("loss is NaN")


def test_a_failed_block_frees_what_its_frames_held():
    refs: list[weakref.ref] = []
    with pytest.raises(RuntimeError, match="loss is NaN") as caught, gpu_memory_released():
        train_that_fails(refs)
    gc.collect()
    assert caught.value.__traceback__ is not None  # the error still says where it came from
    assert refs[0]() is None  # ...but the frame that held the model no longer keeps it


def test_without_the_release_a_caught_error_keeps_the_frames_alive():
    """The control for the test above: the traceback alone keeps the model reachable."""
    refs: list[weakref.ref] = []
    with pytest.raises(RuntimeError) as caught:
        train_that_fails(refs)
    gc.collect()
    assert caught.value.__traceback__ is not None
    assert refs[0]() is not None
