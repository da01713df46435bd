"""Work spread over the CPU cores in forked processes, with a progress bar: the decoded cache's
build and the Cars-shaped generator both go through here.

Fork, as DataLoader workers do: a spawned worker would re-import the caller's main module
(torch and all) first. The workers run PIL and numpy only, never CUDA.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")


def forked_map(function: Callable[[Task], Result], tasks: list[Task],
               workers: int) -> Iterator[Result]:
    """`function` over `tasks`, results in task order, in `workers` forked processes (in this
    process when one worker or one task is enough)."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(function, tasks)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                             mp_context=get_context("fork")) as pool:
        yield from pool.map(function, tasks)


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
