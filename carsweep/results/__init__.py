"""The experiment folder read back without Ray: trials table, best trial, checkpoints, export.

Sits between the trainable (below) and search/analysis (above): pandas, JSON and torch only.
"""

from carsweep.results.store import (
    BestTrial,
    Experiment,
    best_first,
    diverged_message,
    experiment_sweep,
    load_experiment,
    read_result_rows,
    rebuild_trials_table,
)

__all__ = ["BestTrial", "Experiment", "best_first", "diverged_message", "experiment_sweep",
           "load_experiment", "read_result_rows", "rebuild_trials_table"]
