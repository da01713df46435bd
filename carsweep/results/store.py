"""An experiment folder read back with pandas alone: the sweep, its trials, the best trial.

`load_experiment(folder)` is what `status`, `analyze`, `export` and tests use, during a sweep
or after it (finished, stopped, killed or resumed). The trials table (`trials_table`, the one
builder) joins the sweep's Optuna study (results/study.py: each trial's state, its parameters,
and whether it diverged, as the searcher recorded them) with each trial's folder (result.json:
its epochs, metric and checkpoints; params.json: every value it ran with; error.txt: its
failures). It reads, never writes: trials.csv is a copy the sweep saves at its end. Ray's own
experiment state is not read. See docs/experiment-folder.md.

A trial whose loss became NaN/inf is `diverged` in the table, with its message in `error`; the
table lists it after every trial that did not diverge, and `best()` passes it over while any
other trial has a result (its settings would diverge again when retrained).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from carsweep.config.files import (
    CHECKPOINT_FILE,
    ERROR_FILE,
    PARAMS_FILE,
    RESULT_FILE,
    STUDY_FILE,
    SWEEP_FILE,
    TRIAL_FILE,
    TRIALS_FILE,
    trial_dir_name,
)
from carsweep.config.io import load_model, validate, write_text_atomic
from carsweep.config.space import field_values
from carsweep.config.sweep import DIVERGED, SweepConfig, load_sweep
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import CLASSES_FILE
from carsweep.errors import UserError
from carsweep.results.study import TRIAL_ID_ATTR, open_study, ray_trials
from carsweep.storage import BucketPath, in_parallel, is_bucket, location

# The table's first columns, in order; then last_/best_<metric>, failures, error, trial_dir,
# best_checkpoint and config/<field>.
FIRST_COLUMNS = ["trial_id", "state", "stopped_early", DIVERGED, "epochs_run", "planned_epochs"]


@dataclass(frozen=True)
class BestTrial:
    """The best trial of a sweep and everything needed to reuse it."""

    trial_id: str
    folder: Path  # the trial's folder
    config: TrialConfig  # the full config (the checkpoint's trial.yaml, else params + defaults)
    value: float  # its best value of the sweep's metric
    checkpoint: Path | None  # its best checkpoint folder (checkpoint.pt, trial.yaml, classes.json)
    classes: list[str]


@dataclass(frozen=True)
class Experiment:
    """A sweep's folder: its resolved config and its trials table (best first)."""

    folder: Path
    sweep: SweepConfig
    trials: pd.DataFrame

    @property
    def best_column(self) -> str:
        return f"best_{self.sweep.metric}"

    def history(self, trial_id: str) -> pd.DataFrame:
        """One row per epoch the trial reported (the last one where a restart repeated it)."""
        folder = self.trial_folder(trial_id)
        rows = read_result_rows(folder)
        if not rows:
            return pd.DataFrame(columns=["epoch"])
        table = pd.DataFrame([{k: v for k, v in row.items() if k != "config"} for row in rows])
        table = table.drop_duplicates(subset="epoch", keep="last").sort_values("epoch")
        return table.reset_index(drop=True)

    def trial_folder(self, trial_id: str) -> Path:
        match = self.trials.loc[self.trials["trial_id"] == str(trial_id), "trial_dir"]
        if match.empty:
            known = ", ".join(self.trials["trial_id"].astype(str)) or "none"
            raise UserError(f"{self.folder}: no trial {trial_id!r}; trials: {known}")
        return self.folder / str(match.iloc[0])

    def best_row(self) -> pd.Series | None:
        """The table's row of the best trial (`best_trial_row`), or None."""
        return best_trial_row(self.trials, self.sweep.metric, self.sweep.mode)

    def best(self) -> BestTrial:
        """The best trial (`best_row`) with its config, checkpoint and classes."""
        row = self.best_row()
        if row is None:
            raise UserError(f"{self.folder}: {no_best_trial(self.trials, self.sweep.metric)}")
        folder = self.folder / str(row["trial_dir"])
        checkpoint = _existing_checkpoint(self.folder, row.get("best_checkpoint"))
        return BestTrial(
            trial_id=str(row["trial_id"]),
            folder=folder,
            config=_trial_config(folder, checkpoint),
            value=float(row[self.best_column]),
            checkpoint=checkpoint,
            classes=_classes(checkpoint, self.sweep),
        )


def load_experiment(folder: Path | BucketPath | str) -> Experiment:
    """Read an experiment folder, or one in a bucket (a URI); a folder that is not one is a
    one-line UserError. A bucket is listed once, and every existence check of the read is
    answered from that listing: a snapshot, one LIST request per 1,000 objects."""
    folder = location(folder)
    if is_bucket(folder):
        folder = folder.listed()
    sweep = experiment_sweep(folder)
    return Experiment(folder=folder, sweep=sweep, trials=trials_table(folder, sweep))


def experiment_sweep(folder: Path | BucketPath | str) -> SweepConfig:
    """The sweep.yaml of an experiment folder (as launched: paths absolute), without its trials."""
    folder = location(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such experiment folder")
    if not (folder / SWEEP_FILE).is_file():
        raise UserError(f"{folder}: not an experiment folder (no {SWEEP_FILE}); give the "
                        "folder `carsweep sweep` wrote, e.g. results/<name>")
    return load_sweep(folder / SWEEP_FILE)


def read_trials_csv(text: str) -> pd.DataFrame:
    """A trials table from CSV text; ids stay strings (an all-digit id is not a number)."""
    return pd.read_csv(io.StringIO(text), dtype={"trial_id": str})


def trials_table(folder: Path, sweep: SweepConfig | None = None) -> pd.DataFrame:
    """One row per trial, best first: its state and parameters from the study, its epochs,
    metric and checkpoints from its own folder. A sweep from before the study file was kept is
    read from the trials.csv it left."""
    folder = location(folder)
    sweep = sweep or experiment_sweep(folder)
    study = open_study(folder)
    if study is None:
        if (folder / TRIALS_FILE).is_file():
            return read_trials_csv((folder / TRIALS_FILE).read_text())
        raise UserError(f"{folder}: no study ({STUDY_FILE}) and no {TRIALS_FILE}; is it a "
                        "sweep that never started?")
    # In parallel: in a bucket each of a trial's files is a round trip or two
    rows = in_parallel(lambda trial: _trial_row(folder, trial, sweep), ray_trials(study))
    table = pd.DataFrame(rows, columns=None if rows else FIRST_COLUMNS + _metric_columns(sweep))
    table = best_first(table, sweep.metric, sweep.mode) if rows else table
    # Through CSV, so the types are those of a trials.csv read back.
    return read_trials_csv(table.to_csv(index=False))


def save_trials_table(table: pd.DataFrame, folder: Path) -> Path:
    """trials.csv: the table as a file for spreadsheets, written at the end of a sweep."""
    path = location(folder) / TRIALS_FILE
    write_text_atomic(path, table.to_csv(index=False))
    return path


def best_first(table: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The trials table's order: trials with a result by their best value, then those that
    diverged, then those with no result; ties keep their order."""
    best = f"best_{metric}"
    rank = table[best].isna() * 2 + diverged(table)
    ordered = table.assign(_rank=rank).sort_values(
        ["_rank", best], ascending=[True, mode == "min"], na_position="last", kind="stable")
    return ordered.drop(columns="_rank").reset_index(drop=True)


def best_trial_row(table: pd.DataFrame, metric: str, mode: str) -> pd.Series | None:
    """The row of the trial with the best value of `metric` (the first such row on a tie)
    among those that did not diverge; None while no trial has a result, and when every one
    with a result diverged: a diverged trial reports the metric's worst value, and no trial
    worked (`no_best_trial` says why)."""
    best = f"best_{metric}"
    scored = table.dropna(subset=[best])
    scored = scored[~diverged(scored)]
    if scored.empty:
        return None
    target = scored[best].max() if mode == "max" else scored[best].min()
    return scored[scored[best] == target].iloc[0]


def no_best_trial(table: pd.DataFrame, metric: str) -> str:
    """Why `table` has no best trial (`best_trial_row` is None), in a few words."""
    blown = int(diverged(table).sum())
    if blown:
        return (f"no best trial: {diverged_cause(blown)} and no other trial has reported "
                f"{metric} yet")
    return f"no trial has reported {metric} yet"


def diverged_cause(count: int) -> str:
    return f"{count} diverged (loss NaN/inf: lower the learning rates)"


def diverged(table: pd.DataFrame) -> pd.Series:
    """Per row, whether the trial diverged (False for a table older than the column)."""
    if DIVERGED not in table:
        return pd.Series(False, index=table.index)
    return table[DIVERGED].fillna(False).astype(bool)


def read_result_rows(trial_folder: Path) -> list[dict[str, Any]]:
    """Every row a trial reported, in the order written (result.json: one JSON per line)."""
    path = location(trial_folder) / RESULT_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the rows before it still count
    return rows


def ray_trial_rows(trial, *keys: str) -> list[dict[str, Any]]:
    """The rows a Ray trial reported that hold every one of `keys`, from its result.json
    wherever Ray keeps it (a folder or a bucket): what a scheduler of a resumed sweep rebuilds
    its state from."""
    from carsweep.storage import place_in

    rows = read_result_rows(place_in(trial.storage.storage_filesystem,
                                     trial.storage.trial_fs_path))
    return [row for row in rows if all(key in row for key in keys)]


def _metric_columns(sweep: SweepConfig) -> list[str]:
    return [f"last_{sweep.metric}", f"best_{sweep.metric}"]


def _trial_row(folder: Path, trial: FrozenTrial, sweep: SweepConfig) -> dict[str, Any]:
    trial_id = str(trial.user_attrs[TRIAL_ID_ATTR])
    trial_dir = trial_dir_name(trial_id)
    rows = read_result_rows(folder / trial_dir)
    # What Ray ran (params.json: searched and fixed values); before Ray wrote it, the study's.
    config = _params(folder / trial_dir) or {**sweep.fixed(), **field_values(trial.params)}
    metric, mode = sweep.metric, sweep.mode
    scores = [row[metric] for row in rows if _is_number(row.get(metric))]
    epochs_run = max((int(row["epoch"]) for row in rows if "epoch" in row), default=0)
    planned = int(config.get("epochs", TrialConfig.model_fields["epochs"].default))
    message = str(trial.user_attrs.get(DIVERGED, ""))
    failures = _failures(folder / trial_dir)
    return {
        "trial_id": trial_id,
        "state": trial.state.name,
        # PRUNED: ASHA stopped it (or cut it at max_t), or it diverged.
        "stopped_early": trial.state == TrialState.PRUNED and not message,
        DIVERGED: bool(message),
        "epochs_run": epochs_run,
        "planned_epochs": planned,
        f"last_{metric}": float(scores[-1]) if scores else None,
        f"best_{metric}": best_score(rows, metric, mode),
        # Retries after a failure (a lost node, a crash); the error of a trial that gave up.
        "failures": len(failures),
        "error": message or (failures[-1] if trial.state == TrialState.FAIL else ""),
        "trial_dir": trial_dir,
        "best_checkpoint": _best_kept_checkpoint(folder, trial_dir, rows, metric, mode),
        **{f"config/{k}": v for k, v in _flatten(config).items()},
    }


def best_score(rows: list[dict], metric: str, mode: str) -> float | None:
    """The best value of `metric` in a trial's result rows; None before its first."""
    scores = [row[metric] for row in rows if _is_number(row.get(metric))]
    return float(max(scores) if mode == "max" else min(scores)) if scores else None


def _best_kept_checkpoint(folder: Path, trial_dir: str, rows: list[dict], metric: str,
                          mode: str) -> str:
    """The kept checkpoint whose report has the best metric; the earliest on a tie (as Ray)."""
    score_of = {row["checkpoint_dir_name"]: row[metric] for row in rows
                if row.get("checkpoint_dir_name") and _is_number(row.get(metric))}
    kept = sorted(name for name in score_of
                  if (folder / trial_dir / name / CHECKPOINT_FILE).is_file())
    if not kept:
        return ""
    sign = 1 if mode == "max" else -1
    best = max(kept, key=lambda name: sign * score_of[name])  # max keeps the first of ties
    return f"{trial_dir}/{best}"


def _failures(trial_folder: Path) -> list[str]:
    """The last line of each failure Ray recorded in the trial's error.txt (it appends one
    "Failure # N" block per failure, retried or final)."""
    path = trial_folder / ERROR_FILE
    text = path.read_text(errors="replace") if path.is_file() else ""
    blocks = [block for block in text.split("Failure # ")[1:] if block.strip()]
    return [_last_line(block) for block in blocks]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _params(trial_folder: Path) -> dict[str, Any]:
    path = trial_folder / PARAMS_FILE
    if not path.is_file():
        return {}
    try:
        params = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON") from None
    return params if isinstance(params, dict) else {}


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to `a/b` keys, as Ray's flatten_dict does for the table's config columns."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}/")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(
        value)


def _existing_checkpoint(experiment: Path, relative: Any) -> Path | None:
    if not isinstance(relative, str) or not relative:
        return None
    folder = experiment / relative
    return folder if (folder / CHECKPOINT_FILE).is_file() else None


def _trial_config(trial_folder: Path, checkpoint: Path | None) -> TrialConfig:
    """The checkpoint's exact config, else the trial's parameters on top of the defaults."""
    if checkpoint is not None and (checkpoint / TRIAL_FILE).is_file():
        return load_model(TrialConfig, checkpoint / TRIAL_FILE)
    return validate(TrialConfig, _params(trial_folder), str(trial_folder / PARAMS_FILE))


def _classes(checkpoint: Path | None, sweep: SweepConfig) -> list[str]:
    """The checkpoint's class names, else the swept dataset's (if it is still there)."""
    if checkpoint is not None and (checkpoint / CLASSES_FILE).is_file():
        return list(json.loads((checkpoint / CLASSES_FILE).read_text()))
    if sweep.dataset and location(sweep.dataset).is_dir():
        from carsweep.data.manifest import load_dataset

        return list(load_dataset(sweep.dataset).classes)
    return []
