"""A trial leaves nothing behind for the next one: its process has exited, its objects are freed.

On a GPU, a process that exits hands back all its CUDA memory, so on the CPU the processes are
checked: every trial of a sequential sweep ran in its own process (the pid Ray records with
each result), each one was gone by the time the next trial reported its first epoch, and none
is left after the sweep. That sweep is the demo's, in tests/test_console.py, watched by
tests/sweep_runs.py's FirstReportWatcher. Inside a trial, `gpu_memory_released` frees what a
failed run held (an exception's frames keep the model alive otherwise).
"""

from __future__ import annotations

import gc
import weakref

import pytest

from carsweep.search.release import gpu_memory_released


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
