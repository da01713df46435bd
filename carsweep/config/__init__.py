"""Validated configuration: a trial's hyperparameters, a sweep, YAML I/O.

Three layers, lowest first: defaults in the pydantic models, then a YAML file, then
`--set key=value` overrides from the command line. Unknown keys are rejected.
"""

from carsweep.config.io import apply_overrides, load_model, save_model
from carsweep.config.space import ParamSpec
from carsweep.config.sweep import SweepConfig, load_sweep, save_sweep
from carsweep.config.trial import TrialConfig

__all__ = [
    "ParamSpec", "SweepConfig", "TrialConfig", "apply_overrides", "load_model", "load_sweep",
    "save_model", "save_sweep",
]
