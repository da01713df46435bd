"""Work spread over the CPU cores in forked processes, with a progress bar: prepare's audit,
the decoded cache's build and the Cars-shaped generator all go through here.

Fork, as DataLoader workers do: a spawned worker would re-import the caller's main module
(torch and all) first. The workers run PIL and numpy only, never CUDA.

Ctrl-C is the parent's alone to act on. A terminal sends SIGINT to every process of the
command, and a worker that took it while sending a result or reading a task left half a
message in the pool's pipe, or died, or reported KeyboardInterrupt as its task's result; and
a parent interrupted while handing out the tasks then waited for every task handed out so
far: the whole dataset, minutes that read as a hang. So the workers ignore SIGINT, and a
parent that stops early drops the tasks not yet started and waits only for the ones in hand
(a few dozen images each).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import TypeVar

from carsweep.interrupts import interrupts_held_back

Task = TypeVar("Task")
Result = TypeVar("Result")


def forked_map(function: Callable[[Task], Result], tasks: list[Task], workers: int, *,
               chunksize: int = 1) -> Iterator[Result]:
    """`function` over `tasks`, results in task order, in `workers` forked processes (in this
    process when one worker or one task is enough), `chunksize` tasks handed out at a time.

    Stopped early (Ctrl-C, an error, the caller closing it), the tasks not started are
    dropped and the workers end once their task in hand is done: before this returns."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(function, tasks)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                               mp_context=get_context("fork"),
                               initializer=_leave_interrupts_to_the_parent)
    try:
        # The workers are forked while the tasks are handed out; a Ctrl-C landing in a fork's
        # after-fork hook would be lost (carsweep/interrupts.py).
        with interrupts_held_back():
            results = pool.map(function, tasks, chunksize=chunksize)
        yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _leave_interrupts_to_the_parent() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def progress_bar(total: int, label: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """tqdm on stderr when enabled (and installed); a no-op counter otherwise. Yields
    `advance(n)`."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if not enabled or tqdm is None:
        yield lambda n: None
        return
    with tqdm(total=total, desc=label, unit="img", file=sys.stderr) as bar:
        yield bar.update
