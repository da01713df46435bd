"""The experiment folder read back without Ray: study, trials table, best trial, export.

Sits between the trainable (below) and search/analysis (above): optuna, pandas, JSON and torch
only.
"""

from carsweep.results.store import (
    BestTrial,
    Experiment,
    best_first,
    experiment_sweep,
    load_experiment,
    read_result_rows,
    save_trials_table,
    trials_table,
)
from carsweep.results.study import open_study

__all__ = ["BestTrial", "Experiment", "best_first", "experiment_sweep", "load_experiment",
           "open_study", "read_result_rows", "save_trials_table", "trials_table"]
