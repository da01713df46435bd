"""The files Tune resumes a sweep from, and whether a dead driver left them whole.

Tuner.restore reads tuner.pkl and the newest snapshot (by name) of each of Tune's states.
Tune's driver copies them from a staging folder on its own disk into the experiment with every
snapshot, truncating each file first: a driver killed during a copy (SIGKILL, its machine
lost) can leave some cut short, and Tune fails on them with a traceback.
"""

from __future__ import annotations

import fnmatch
import json
import pickletools
from pathlib import Path

from ray._common.utils import get_default_ray_temp_dir
from ray.tune.execution.tune_controller import TuneController
from ray.tune.search import Searcher
from ray.tune.search.search_generator import SearchGenerator

from carsweep.config.files import TUNER_FILE
from carsweep.errors import UserError


def cut_short_resume_files(experiment: Path) -> list[str]:
    """The names of the files Tuner.restore reads that are cut short."""
    return [path.name for path in _resume_files(experiment) if not _whole(path)]


def check_resume_files_whole(experiment: Path) -> None:
    """One line naming the resume files cut short, and where whole copies are, if any."""
    cut = cut_short_resume_files(experiment)
    if not cut:
        return
    them = "it" if len(cut) == 1 else "them"
    copies = _driver_copies(experiment.name, cut)
    where = f"; whole copies are in {copies}: copy {them} over, then resume again" if copies else ""
    raise UserError(f"{experiment}: {', '.join(cut)} cut short (the sweep's driver died while "
                    f"Ray copied {them} there); Ray cannot resume from {them}{where}")


def _resume_files(experiment: Path) -> list[Path]:
    templates = (TuneController.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL,
                 SearchGenerator.CKPT_FILE_TMPL)
    newest = [sorted(experiment.glob(template.format("*")))[-1:] for template in templates]
    return [experiment / TUNER_FILE, *(path for found in newest for path in found)]


def _whole(path: Path) -> bool:
    """Whether one of Tune's resume files holds all that was written: the experiment state
    is JSON, the others are pickles (search_gen_state-*.json too), whose opcodes are walked
    to their STOP, never run."""
    data = path.read_bytes()
    try:
        if fnmatch.fnmatch(path.name, TuneController.CKPT_FILE_TMPL.format("*")):
            json.loads(data)
        else:
            for _opcode in pickletools.genops(data):
                pass
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        return False
    return True


def _driver_copies(name: str, files: list[str]) -> Path | None:
    """The newest staging folder of Tune on this machine (the driver's, if it ran here) that
    holds every one of `files` whole, or None."""
    staged = Path(get_default_ray_temp_dir()).glob(f"session_*/artifacts/*/{name}/driver_artifacts")
    whole = [folder for folder in staged
             if all((folder / file).is_file() and _whole(folder / file) for file in files)]
    return max(whole, key=lambda folder: folder.stat().st_mtime, default=None)
