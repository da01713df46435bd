"""The distributed sweep: Ray Tune runs Optuna's suggestions, ASHA stops the weak trials.

The only package that imports ray. Entry point: `run_sweep` (launch or resume); an experiment
folder is read with carsweep.results, without Ray.
"""

from carsweep.search.searcher import PruningAwareOptunaSearch, make_searcher
from carsweep.search.space import DefineByRunSpace
from carsweep.search.tuner import SweepOutcome, experiment_path, run_sweep

__all__ = [
    "DefineByRunSpace", "PruningAwareOptunaSearch", "SweepOutcome", "experiment_path",
    "make_searcher", "run_sweep",
]
