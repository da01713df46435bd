"""Ctrl-C held back over the steps that must not stop halfway, and lost nowhere.

Python raises KeyboardInterrupt at the next bytecode its main thread runs after SIGINT. When
that bytecode is in an after-fork hook (logging's `_releaseLock`, run in the parent after each
fork of a Popen with a `preexec_fn`, as Ray starts its processes), the exception is only
printed ("Exception ignored in: <function _releaseLock ...>") and the command carries on as if
nobody had pressed Ctrl-C: a sweep ran to its end and exited 0. And a start-up stopped halfway
leaves what it started with nobody to stop it: Ray's agents outlived a `sweep` Ctrl-C'd in
`ray.init`. Such steps run under `interrupts_held_back`: a Ctrl-C during one is acted on the
moment it ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class InterruptedOnceWritten(KeyboardInterrupt):
    """A Ctrl-C acted on the moment `path`, the command's output, was put in place whole: the
    command stops, and says its output is there (a bare "interrupted" reads as half-written)."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def interrupted_words(interrupt: KeyboardInterrupt) -> str:
    """What a command stopped by `interrupt` says after its name."""
    if isinstance(interrupt, InterruptedOnceWritten):
        return f"interrupted once {interrupt.path} was written whole"
    return "interrupted"


@contextmanager
def interrupts_held_back() -> Iterator[None]:
    """SIGINT during the block is noted, and raised again when the block ends (success or
    not), to the handler there was before: KeyboardInterrupt, right after the block. Only the
    main thread can set a signal handler; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: noted.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if noted:
            signal.raise_signal(signal.SIGINT)
