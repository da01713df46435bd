"""The distributed sweep: Ray Tune runs Optuna's suggestions, ASHA stops the weak trials.

The only package that imports ray. Entry point: `run_sweep` (launch or resume); an experiment
folder is read with carsweep.results, without Ray.

The names below are imported on first use (PEP 562): a Ray worker that unpickles a probe
task or a trial imports carsweep.search.preflight.nodes or .trial, and through this file it would
otherwise import the tuner, Optuna's searcher and pandas too, seconds of start-up per
process that neither needs.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_WHERE = {
    "DefineByRunSpace": "carsweep.search.space",
    "PruningAwareOptunaSearch": "carsweep.search.searcher",
    "make_searcher": "carsweep.search.searcher",
    "SweepOutcome": "carsweep.search.tuner",
    "experiment_path": "carsweep.search.tuner",
    "run_sweep": "carsweep.search.tuner",
}
__all__ = [
    "DefineByRunSpace", "PruningAwareOptunaSearch", "SweepOutcome", "experiment_path",
    "make_searcher", "run_sweep",
]

if TYPE_CHECKING:
    from carsweep.search.searcher import PruningAwareOptunaSearch, make_searcher
    from carsweep.search.space import DefineByRunSpace
    from carsweep.search.tuner import SweepOutcome, experiment_path, run_sweep


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
