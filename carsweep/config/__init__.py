"""Validated configuration: a trial's hyperparameters, a sweep, YAML I/O.

Three layers, lowest first: defaults in the pydantic models, then a YAML file, then
`--set key=value` overrides from the command line. Unknown keys are rejected.
"""

from carsweep.config.io import apply_overrides, load_model, save_model
from carsweep.config.trial import TrialConfig

__all__ = ["TrialConfig", "apply_overrides", "load_model", "save_model"]
