"""Write a whole output folder or nothing: build it beside the target, then rename it in place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from carsweep.errors import UserError


def check_replaceable(out: Path, *, force: bool, what: str) -> None:
    """Refuse an `out` that is a file, or a non-empty folder unless `force` (before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: folder is not empty; pass --force to replace it with {what}, "
                        "or choose another output folder")


@contextmanager
def building_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out`.

    If the body raises, the temporary folder is removed and `out` is left as it was. An
    existing `out` is moved aside first and deleted only after the new folder is in place, so
    at every moment `out` is either the old folder or the new one, never half of either.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    temporary.chmod(0o777 & ~_umask())  # mkdtemp makes it private; `out` should not be
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _move_into_place(temporary, out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(temporary: Path, out: Path) -> None:
    if not out.exists():
        os.replace(temporary, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "old")
    try:
        os.replace(temporary, out)
    except OSError:
        os.replace(old / "old", out)  # put the old folder back before reporting
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
