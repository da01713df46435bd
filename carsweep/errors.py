"""The one exception type a user sees: the CLI prints it as one line and exits 2."""

from __future__ import annotations

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
