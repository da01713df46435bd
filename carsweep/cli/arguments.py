"""Argument types for numbers a flag takes, so a value out of range is argparse's one-line
error naming the flag, before any work: `--seed -1`, `--workers 0`, `--port 70000`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

SEED_MAX = 2**32 - 1  # numpy's SeedSequence and torch take any seed in 0..2**32-1


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type` for a whole number in low..high (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number "
                                             f"{bounds}")
        return value
    return parse


def place(text: str):
    """An argparse `type` for a folder or a bucket URI (`s3://BUCKET/PREFIX`, `gs://...`):
    a Path or a carsweep.storage.BucketPath; an unknown scheme is argparse's one line."""
    from carsweep.errors import UserError
    from carsweep.storage import location

    try:
        return location(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


SEED = whole_number(0, SEED_MAX)
COUNT = whole_number(1)        # workers, classes, images, trials: at least one
COUNT_OR_NONE = whole_number(0)  # test images per class, optional counts where 0 means none
PORT = whole_number(1, 65535)
PORT_OR_OFF = whole_number(0, 65535)
