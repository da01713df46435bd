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

Each study trial carries the Ray trial it stands for in its user attribute TRIAL_ID_ATTR, so
the study and the trial folders are joined by that id.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from carsweep.config.files import STUDY_FILE, STUDY_NAME

TRIAL_ID_ATTR = "trial_id"  # the Ray trial a study trial stands for


def study_path(experiment: Path) -> Path:
    return Path(experiment) / STUDY_FILE


def journal_storage(path: Path) -> JournalStorage:
    """The JournalStorage in `path` (created empty when missing: only the searcher does)."""
    return JournalStorage(JournalFileBackend(str(path)))


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
