"""The sweep's space as an Optuna define-by-run function, so conditional parameters work.

Ray Tune's dict spaces cannot say "momentum only for sgd"; a define-by-run function can: it
suggests the parents first, then each child only where its `when` holds. Fixed values are
returned, not suggested, so Optuna's study holds only what TPE should learn from while the
trial's config still carries every field it was run with.

A branched field (a range per optimizer) is one study parameter per branch, each under its own
name (`lr|sgd`, `lr|adam,adamw`): TPE models each range alone, never two ranges as one. Ray's
OptunaSearch hands a trial the suggested names, so the searcher maps them back to the field
(`config.space.field_values`) before Ray sees them; a fixed branch is returned where it applies.
"""

from __future__ import annotations

from typing import Any

import optuna

from carsweep.config.space import ParamSpec, field_values
from carsweep.config.sweep import SweepConfig


class DefineByRunSpace:
    """Callable `(optuna.Trial) -> fixed values`, picklable so Ray can save the searcher."""

    def __init__(self, config: SweepConfig):
        self.parameters = config.parameters()  # parents first
        self.fixed_values = config.fixed()

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = dict(self.fixed_values)
        returned: dict[str, Any] = dict(self.fixed_values)
        for param in self.parameters:
            if not param.applies(chosen):
                continue
            if param.spec.searched:
                chosen[param.field] = suggest(trial, param.name, param.spec)
            else:  # a fixed branch: returned like any fixed value, nothing for TPE to learn
                chosen[param.field] = returned[param.field] = param.spec.values[0]
        return returned

    def sample_all(self, trial: optuna.Trial) -> dict[str, Any]:
        """The full parameter dict of one trial, by field (what Ray's config will hold)."""
        fixed = self(trial)
        return field_values({**trial.params, **fixed})


def suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    """One value for `name` from the Optuna trial, by the kind of the spec."""
    if spec.kind == "choice":
        return trial.suggest_categorical(name, spec.values)
    low, high = spec.values
    if spec.kind == "int":
        return trial.suggest_int(name, low, high, log=spec.log)
    return trial.suggest_float(name, float(low), float(high), log=spec.kind == "loguniform")
