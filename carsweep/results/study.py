"""The sweep's Optuna study, kept in the experiment folder and read with optuna alone.

The searcher (carsweep/search/searcher.py) writes the study as the trials report: a trial when
Ray creates it, each epoch's metric as an intermediate value, its end (COMPLETE, PRUNED for
ASHA's stops and for a trial that diverged, FAIL for a crash). Everything that shows a sweep
afterwards, or while it runs (`status`, the trials table, importance, the sweep plots,
optuna-dashboard), reads this study and the trials' own result files; nothing rebuilds it.

The storage is Optuna's JournalStorage over a JournalFileBackend: one file, STUDY_FILE, to which
every change is appended as one JSON line (written and fsynced whole), replayed on reading.
Chosen over SQLite for where experiments live, on storage every node mounts (NFS):

- one writer, the driver's searcher; readers (status, analyze, the dashboard) only read. An
  append-only log needs no database lock to read, and its writer locks with a symlink, which
  works on every NFS version; SQLite's fcntl locks are unreliable on NFS (SQLite's own FAQ).
- a driver killed mid-sweep (SIGKILL) leaves a log whose every complete line holds; replaying
  it gives the study as of the last write. No server, no journal-mode files beside it.
- reading needs no write access: a journal file that exists is only opened for reading, so a
  read-only mount of an experiment can be shown.

An experiment in a bucket has its journal there too, as the driver last uploaded it with Tune's
snapshot (search/searcher.py); it is read here with `BucketJournal`, read-only.

Each study trial carries the Ray trial it stands for in its user attribute TRIAL_ID_ATTR, so
the study and the trial folders are joined by that id.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from optuna.trial import FrozenTrial

from carsweep.config.files import STUDY_FILE, STUDY_NAME
from carsweep.errors import UserError
from carsweep.storage import BucketPath, is_bucket, local_folder_for, location

TRIAL_ID_ATTR = "trial_id"  # the Ray trial a study trial stands for


def study_path(experiment: Path | BucketPath) -> Path | BucketPath:
    return location(experiment) / STUDY_FILE


def driver_study_file(experiment: Path | BucketPath) -> Path:
    """Where the driver's searcher writes the study: in the experiment folder; for an
    experiment in a bucket, on the driver's own disk (an object cannot be appended to), whence
    the searcher PUTs it into the bucket before each snapshot of its state (search/
    searcher.py). Its local folder is made if missing."""
    if is_bucket(experiment):
        local = local_folder_for(experiment)
        local.mkdir(parents=True, exist_ok=True)
        return local / STUDY_FILE
    return Path(experiment) / STUDY_FILE


def fetch_driver_study(experiment: BucketPath) -> Path:
    """Before a resume: the study in the bucket, as the driver's file. A driver file that goes
    on from the bucket's (this machine ran the sweep, and wrote after the last upload) is
    kept, being newer; any other is replaced (a new head has none)."""
    local = driver_study_file(experiment)
    uploaded = study_path(experiment)
    if not uploaded.is_file():
        raise UserError(f"{experiment}: no study ({STUDY_FILE}) in the bucket; was the sweep "
                        "run by a carsweep that kept none?")
    data = uploaded.read_bytes()
    if not (local.is_file() and local.read_bytes().startswith(data)):
        local.parent.mkdir(parents=True, exist_ok=True)
        uploaded.download_to(local)
    return local


def journal_storage(path: Path | BucketPath) -> JournalStorage:
    """The JournalStorage in `path` (created empty when missing: only the searcher does); in a
    bucket, read-only."""
    if is_bucket(path):
        return JournalStorage(BucketJournal(path))
    return JournalStorage(JournalFileBackend(str(path)))


class BucketJournal(BaseJournalBackend):
    """A study journal in a bucket, for reading: fetched whole (a GET of a few hundred KB for a
    large sweep), and again when a read comes more than REFETCH_S after the last fetch, so a
    dashboard follows a running sweep. A line cut short is left out, as Optuna's file backend
    leaves it; writing is refused (the driver alone writes the journal, on its own disk)."""

    REFETCH_S = 5.0

    def __init__(self, path: BucketPath):
        self._path = dataclasses.replace(path, listing=None)  # always the object as it is now
        self._logs: list[dict[str, Any]] = []
        self._fetched_at = -float("inf")

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        if time.monotonic() - self._fetched_at > self.REFETCH_S:
            self._logs = list(_whole_lines(self._path.read_bytes()))
            self._fetched_at = time.monotonic()
        yield from self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise UserError(f"{self._path}: a study in a bucket is read-only here; the sweep's "
                        "driver writes it on its own disk and uploads it")


def _whole_lines(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: cut short, or empty
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            return


def open_study(experiment: Path) -> optuna.Study | None:
    """The experiment's study, read-only use; None when the folder has no study file (a sweep
    from before carsweep kept one)."""
    path = study_path(experiment)
    if not path.is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY_NAME, storage=journal_storage(path))


def ray_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials that Ray ran (a point to evaluate not yet handed out has no trial)."""
    return [trial for trial in study.get_trials(deepcopy=False)
            if TRIAL_ID_ATTR in trial.user_attrs]
