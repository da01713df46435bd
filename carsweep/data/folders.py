"""Write a whole output folder or nothing: build it beside the target, then rename it in place."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from carsweep.errors import UserError
from carsweep.interrupts import InterruptedOnceWritten, interrupts_held_back


def check_output_path(path: Path, *, flag: str, folder: bool = True,
                      renamed_in: bool = False) -> None:
    """Refuse, before any work, an output `path` that cannot be written: one under a file, on a
    read-only file system or in a folder this user may not write, a file where a folder is
    wanted (or the reverse); and, where the folder is built beside it and renamed in
    (`renamed_in`), the current folder or one holding it, which cannot be renamed away.

    Every command checks each of its outputs with this before reading its inputs, so a long
    run never ends in a traceback about where it meant to write.
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    here = Path.cwd()
    if renamed_in and (absolute == here or absolute in here.parents):
        raise UserError(f"{flag} {path} is the folder you are in (or holds it); the output is "
                        "built beside it and renamed into place, which that folder cannot be; "
                        f"give a new folder's name, e.g. {path / 'out'}")
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"{flag} {path} is {'a file' if folder else 'a folder'}; give "
                        f"{'a folder' if folder else 'a file'}'s path")
    # The folder where new entries appear: the output itself when written in place, else its
    # parent; the nearest one of it and its parents that exists is what must be writable.
    container = absolute if folder and not renamed_in else absolute.parent
    existing = next(parent for parent in (container, *container.parents) if parent.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; give a path "
                        "under a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = ("is on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY
               else "is not writable by you (permission denied)")
        raise UserError(f"{flag} {path}: {existing} {why}; write somewhere else")


def check_replaceable(out: Path, *, force: bool, what: str, flag: str) -> None:
    """Refuse an `out` that cannot be written (check_output_path), or a non-empty folder
    unless `force` (before any work)."""
    out = Path(out)
    check_output_path(out, flag=flag, renamed_in=True)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: folder is not empty; pass --force to replace it with {what}, "
                        "or choose another output folder")


@contextmanager
def building_folder(out: Path, *, final: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out`.

    If the body raises, the temporary folder is removed and `out` is left as it was. An
    existing `out` is moved aside first and deleted only after the new folder is in place, so
    at every moment `out` is either the old folder or the new one, never half of either.
    A Ctrl-C as it lands raises InterruptedOnceWritten(out); where `out` is not the command's
    output but a stage copied on after (`final` False: a bucket's analysis), KeyboardInterrupt.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_left_by_killed_builds(out)
    temporary = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out, "building"), dir=out.parent))
    temporary.chmod(0o777 & ~_umask())  # mkdtemp makes it private; `out` should not be
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _move_into_place(temporary, out, final)


def _temporary_prefix(out: Path, kind: str) -> str:
    """`.OUT.building-HOST-PID-`: whose folder it is, so that a later build can tell one left
    by a killed process (kill -9, a machine that lost power) from one being built right now,
    on this machine or on another sharing the folder."""
    return f"{_this_machines(out, kind)}{os.getpid()}-"


def _this_machines(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-{socket.gethostname()}-"


def _remove_left_by_killed_builds(out: Path) -> None:
    """Remove the temporary folders beside `out` that this machine's killed builds left. An
    old `out` moved aside by a build killed before the new one took its place is the only
    whole copy: it is put back."""
    for kind in ("building", "old"):
        mine = _this_machines(out, kind)
        for folder in out.parent.glob(glob.escape(mine) + "*"):
            pid = folder.name[len(mine):].split("-", 1)[0]
            if not pid.isdigit() or _running(int(pid)):
                continue
            if kind == "old" and (folder / "old").is_dir() and not out.exists():
                os.replace(folder / "old", out)
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(temporary: Path, out: Path, final: bool) -> None:
    # A Ctrl-C between the two renames would leave no `out`, and the old one deleted with its
    # holding folder: it is acted on once both are done.
    swapped = False
    try:
        with interrupts_held_back():
            _swap_in(temporary, out)
            swapped = True
    except KeyboardInterrupt:
        if swapped and final:
            raise InterruptedOnceWritten(out) from None
        raise


def _swap_in(temporary: Path, out: Path) -> None:
    if not out.exists():
        os.replace(temporary, out)
        return
    old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out, "old"), dir=out.parent))
    os.replace(out, old / "old")
    try:
        os.replace(temporary, out)
    except OSError:
        os.replace(old / "old", out)  # put the old folder back before reporting
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
