"""The distributed sweep: Ray Tune runs Optuna's suggestions, ASHA stops the weak trials.

The only package that imports ray. Entry points: `run_sweep` (launch or resume) and
`trials_table` (read an experiment folder).
"""

from carsweep.search.searcher import PruningAwareOptunaSearch, make_searcher
from carsweep.search.space import DefineByRunSpace
from carsweep.search.table import format_table, save_trials_table, trials_table
from carsweep.search.tuner import SweepOutcome, experiment_path, run_sweep

__all__ = [
    "DefineByRunSpace", "PruningAwareOptunaSearch", "SweepOutcome", "experiment_path",
    "format_table", "make_searcher", "run_sweep", "save_trials_table", "trials_table",
]
