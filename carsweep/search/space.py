"""The sweep's space as an Optuna define-by-run function, so conditional parameters work.

Ray Tune's dict spaces cannot say "momentum only for sgd"; a define-by-run function can: it
suggests the parents first, then each child only where its `when` holds. Fixed values are
returned, not suggested, so Optuna's study holds only what TPE should learn from while the
trial's config still carries every field it was run with.
"""

from __future__ import annotations

from typing import Any

import optuna

from carsweep.config.sweep import ParamSpec, SweepConfig


class DefineByRunSpace:
    """Callable `(optuna.Trial) -> fixed values`, picklable so Ray can save the searcher."""

    def __init__(self, config: SweepConfig):
        self.order = _parents_first(config)
        self.specs = {name: config.space[name] for name in self.order}
        self.conditions = {name: config.conditions(name) for name in self.order}
        self.fixed_values = config.fixed()

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = dict(self.fixed_values)
        for name in self.order:
            spec = self.specs[name]
            if spec.searched and _holds(self.conditions[name], chosen):
                chosen[name] = suggest(trial, name, spec)
        return self.fixed_values

    def sample_all(self, trial: optuna.Trial) -> dict[str, Any]:
        """The full parameter dict of one trial (what Ray's config will hold)."""
        fixed = self(trial)
        return {**trial.params, **fixed}


def suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    """One value for `name` from the Optuna trial, by the kind of the spec."""
    if spec.kind == "choice":
        return trial.suggest_categorical(name, spec.values)
    low, high = spec.values
    if spec.kind == "int":
        return trial.suggest_int(name, low, high, log=spec.log)
    return trial.suggest_float(name, float(low), float(high), log=spec.kind == "loguniform")


def _holds(conditions: dict[str, list[Any]], chosen: dict[str, Any]) -> bool:
    return all(name in chosen and chosen[name] in allowed for name, allowed in conditions.items())


def _parents_first(config: SweepConfig) -> list[str]:
    """Space order, except that a parameter named in a `when` comes before its children."""
    parents = {parent for name in config.space for parent in config.conditions(name)}
    return [n for n in config.space if n in parents] + [n for n in config.space if n not in parents]
