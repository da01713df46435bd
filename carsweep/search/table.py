"""The trials table of an experiment folder: one row per trial, best first; saved as trials.csv.

Read through Ray's ExperimentAnalysis (the experiment state and each trial's result.json), so
it works on a running, interrupted or finished sweep without starting Ray. Its rows and order
are those of `carsweep.results.rebuild_trials_table` (the same table from the JSON files alone):
the order and the `diverged` reading come from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import ExperimentAnalysis
from ray.tune.utils import flatten_dict

from carsweep.config.io import write_text_atomic
from carsweep.config.sweep import DIVERGED
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.results.store import best_first, diverged, diverged_message

TRIALS_FILE = "trials.csv"
FIRST_COLUMNS = ("trial_id", "state", "stopped_early", "epochs_run", "planned_epochs")


def load_analysis(experiment: Path) -> ExperimentAnalysis:
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise UserError(f"{experiment}: no such experiment folder")
    try:
        # Ray reads a relative path as a URI without a scheme: give it an absolute one.
        return ExperimentAnalysis(str(experiment.resolve()))
    except ValueError:
        raise UserError(
            f"{experiment}: not a sweep's experiment folder (no experiment_state-*.json)"
        ) from None


def trials_table(experiment: Path, metric: str, mode: str) -> pd.DataFrame:
    """Per trial: state, epochs run, last and best metric, its parameters, folder, checkpoint."""
    analysis = load_analysis(experiment)
    rows = [_trial_row(analysis, trial, metric, mode) for trial in analysis.trials]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*FIRST_COLUMNS, f"last_{metric}", f"best_{metric}"])
    return best_first(table, metric, mode)


def _trial_row(analysis: ExperimentAnalysis, trial: Any, metric: str, mode: str) -> dict:
    history = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
    scores = history[metric].dropna() if metric in history else pd.Series(dtype=float)
    params = {f"config/{k}": v for k, v in flatten_dict(dict(trial.config)).items()}
    checkpoint = analysis.get_best_checkpoint(trial, metric, mode) if len(scores) else None
    epochs_run = int(history["epoch"].max()) if "epoch" in history else 0
    planned = int(trial.config.get("epochs", TrialConfig.model_fields["epochs"].default))
    message = diverged_message(history.to_dict("records"))
    return {
        "trial_id": trial.trial_id,
        "state": trial.status,
        # TERMINATED covers both ends; a trial ended by ASHA ran fewer epochs than planned.
        "stopped_early": trial.status == "TERMINATED" and epochs_run < planned,
        DIVERGED: bool(message),  # ended by a NaN/inf loss: TERMINATED, not retried
        "epochs_run": epochs_run,
        "planned_epochs": planned,
        f"last_{metric}": float(scores.iloc[-1]) if len(scores) else None,
        f"best_{metric}": float(scores.max() if mode == "max" else scores.min())
        if len(scores) else None,
        # Retries after a failure (a lost node, a crash); the error of a trial that gave up.
        "failures": int(trial.run_metadata.num_failures),
        "error": message or (_last_error_line(trial) if trial.status == "ERROR" else ""),
        "trial_dir": trial.storage.trial_dir_name,
        "best_checkpoint": _relative(checkpoint.path, analysis) if checkpoint else "",
        **params,
    }


def _last_error_line(trial: Any) -> str:
    """The message of the trial's latest error (Ray appends each failure to error.txt)."""
    text = trial.get_error() or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _relative(path: str, analysis: ExperimentAnalysis) -> str:
    try:
        return str(Path(path).relative_to(analysis.experiment_path))
    except ValueError:
        return str(path)


def save_trials_table(table: pd.DataFrame, experiment: Path) -> Path:
    path = Path(experiment) / TRIALS_FILE
    write_text_atomic(path, table.to_csv(index=False))
    return path


def format_table(table: pd.DataFrame, metric: str, max_params: int = 8) -> str:
    """The table for a terminal: the first columns (`diverged` where a trial did), the metric,
    then the parameters that vary."""
    params = [c for c in table.columns if c.startswith("config/")]
    varying = [c for c in params if table[c].astype(str).nunique() > 1][:max_params]
    first = list(FIRST_COLUMNS)
    if diverged(table).any():
        first.insert(first.index("stopped_early") + 1, DIVERGED)
    columns = [*first, f"last_{metric}", f"best_{metric}", *varying]
    shown = table[[c for c in columns if c in table.columns]].rename(
        columns=lambda c: c.removeprefix("config/")
    )
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
