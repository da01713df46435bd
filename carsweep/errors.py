"""The one exception type a user sees: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import errno
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module first: pydantic is 45 ms a Ctrl-C can land in
    from pydantic import ValidationError


class UserError(Exception):
    """A problem with what the user gave us (a path, a value, a file), stated in one sentence.

    The message names the bad value and what would be valid. The CLI prints it without a
    traceback and exits with code 2; library callers can catch it like any exception.
    """


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line for the first problem pydantic found, naming the field by its path as YAML
    writes it (`space.lr[1]`, `searcher.points_to_evaluate[0]`)."""
    first = error.errors()[0]
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                    for part in first["loc"]).removeprefix(".") or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key `{field}`"
    message = first["msg"].removeprefix("Value error, ")
    if "input" in first and kind != "missing":
        return f"{source}: `{field}` = {first['input']!r} is invalid: {message}"
    return f"{source}: `{field}`: {message}"


def last_line(error: BaseException) -> str:
    """The line of an error worth showing: Ray wraps a remote error in a long traceback whose
    last line is the error itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# The operating system's refusals that come from the machine, not from carsweep's code: the
# CLI turns these into one line (`describe_environment_error`). Any other exception, an
# OSError with another errno (ENOENT, EBADF, EINVAL...) included, is a bug or an unforeseen
# case and keeps its traceback: hiding those would hide carsweep's own mistakes.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free some space on that disk or write somewhere else",
    errno.EDQUOT: "your disk quota there is used up; free some or write somewhere else",
    errno.EROFS: "that file system is mounted read-only; write somewhere else",
    errno.EACCES: "you may not write or read there; choose another place or fix its permissions",
    errno.EPERM: "the operation is not permitted there; choose another place",
    errno.ENOTDIR: "a part of that path is a file, not a folder; give a path under a folder",
    errno.EISDIR: "that path is a folder where a file was expected; give a file's path",
    errno.EBUSY: "it is in use (the current folder, or a mount point?); give another path",
    errno.EIO: "the disk reported an input/output error; check the disk or the network mount",
    errno.EMFILE: "too many files are open; raise the limit (`ulimit -n 4096`) and try again",
    errno.ENFILE: "the system has too many files open; close some programs and try again",
    errno.ENAMETOOLONG: "the name is too long for the file system; give a shorter path",
    errno.ENOMEM: "the machine ran out of memory; ask for less (fewer workers, smaller "
                  "images or batches) or use a machine with more",
}


def is_environment_error(error: BaseException) -> bool:
    """True for a MemoryError or an OSError the machine gave (ENVIRONMENT_ERRNOS)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS)


def describe_environment_error(error: MemoryError | OSError) -> str:
    """One line for an error of the machine: the path(s) it names, what the system said, and
    what to do."""
    if isinstance(error, MemoryError):
        return "ran out of memory; " + ENVIRONMENT_ERRNOS[errno.ENOMEM].split("; ", 1)[1]
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    said = error.strerror or os.strerror(error.errno)
    return f"{paths + ': ' if paths else ''}{said}; {ENVIRONMENT_ERRNOS[error.errno]}"


def user_message(error: UserError) -> str:
    """The message of a UserError, as one line even when it crossed a DataLoader worker,
    whose re-raise prepends "Caught UserError in DataLoader worker process 0" and the worker's
    traceback, and ends with `carsweep.errors.UserError: <message>`."""
    text = str(error)
    if "Traceback (most recent call last)" not in text:
        return text
    return re.sub(r"^[\w.]+: ", "", last_line(error), count=1)
