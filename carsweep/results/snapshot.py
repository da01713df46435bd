"""How fresh an experiment in a bucket is: when the sweep's driver last uploaded a snapshot.

Ray Tune's driver keeps the trials' result.json, progress.csv and events, the study journal and
its own state in a staging folder on its disk, and uploads that folder whole at each snapshot:
every TUNE_GLOBAL_CHECKPOINT_S seconds (30 s for a bucket: search/tuner.py), after a trial's
second checkpoint since the last one, and at the end. Checkpoints do not wait: each trial
uploads its own. So a reader of the bucket sees the sweep as of the last upload, and says when
that was: the LastModified of the newest experiment_state-*.json, which every snapshot rewrites
(answered by the listing the read made anyway). The period the driver runs with is in that file
too (Ray saves it there, and a resume restores it from there, whatever the resuming shell
sets), near its end: a HEAD and one ranged GET of its last 16 KB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from carsweep.config.files import EXPERIMENT_STATE_PREFIX, TRIALS_FILE
from carsweep.storage import BucketPath

STATE_TAIL_BYTES = 16 * 1024  # the runner's settings and stats close the file (~1.5 KB of it)
_PERIOD = re.compile(r'"_checkpoint_period":\s*"?([^",}\s]+)')


@dataclass(frozen=True)
class Snapshot:
    uploaded: datetime  # the newest experiment state's LastModified, UTC
    period: str | None  # TUNE_GLOBAL_CHECKPOINT_S as the driver runs it, "30" or "auto"; or None
    driver_ended: bool  # trials.csv was written after it: the driver finished, or was stopped


def latest_snapshot(experiment: BucketPath) -> Snapshot | None:
    """The newest snapshot of the sweep's driver in the bucket; None before the first."""
    states = [name for name in experiment.files()
              if name.startswith(EXPERIMENT_STATE_PREFIX) and name.endswith(".json")]
    if not states:
        return None
    newest = max((experiment / name for name in states), key=lambda state: state.modified())
    uploaded = newest.modified()
    found = _PERIOD.search(newest.read_tail(STATE_TAIL_BYTES).decode("utf-8", "replace"))
    table = experiment / TRIALS_FILE
    return Snapshot(uploaded=uploaded, period=found.group(1) if found else None,
                    driver_ended=table.is_file() and table.modified() >= uploaded)


def freshness_line(snapshot: Snapshot | None, now: datetime) -> str:
    """`in the bucket as of 20:42:00 UTC, 12 s ago (a running sweep uploads every 30 s)`; the
    date too when it is not today's (UTC)."""
    if snapshot is None:
        return ("in the bucket: no snapshot of the sweep's driver yet (its first comes when "
                "the trials start)")
    when = snapshot.uploaded
    shown = f"{when:%H:%M:%S}" if when.date() == now.date() else f"{when:%Y-%m-%d %H:%M:%S}"
    head = f"in the bucket as of {shown} UTC, {_age((now - when).total_seconds())} ago"
    if snapshot.driver_ended:
        return f"{head} (the sweep's last upload: its driver has ended)"
    if snapshot.period is None:
        return head
    return f"{head} (a running sweep uploads {_every(snapshot.period)})"


def _every(period: str) -> str:
    if period == "auto":  # Ray's: max(10 s, 19 x the time a snapshot took)
        return "every 10 s or more (Ray's automatic period)"
    try:
        return f"every {float(period):g} s"
    except ValueError:
        return f"every {period} s"


def _age(seconds: float) -> str:
    """12 s, 5 min, 3 h 5 min, 2 days; never negative (the store's clock may lead ours)."""
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} days"
