"""The space grammar: how a sweep sets each TrialConfig field across trials, and its checks.

Each entry of `space` is one TrialConfig field and one of:

    lr: 0.01                                  fixed value
    optimizer: {choice: [sgd, adam]}          one of a list
    weight_decay: {uniform: [0.0, 0.001]}     float range
    lr: {loguniform: [1.0e-4, 0.1]}           float range, sampled on a log scale
    warmup_epochs: {int: [0, 2]}              integer range, both ends included (`log: true` too)

and optionally `when: {optimizer: [sgd, rmsprop]}`: the value is searched only for trials whose
other parameter takes one of those values (Optuna's define-by-run space; TPE does not learn
from values that had no effect). Momentum and nesterov get that condition by default when the
optimizer is searched, because adam(w) ignores them.

A field can also take a list of such specs, its branches, one per set of trials:

    lr:
      - {loguniform: [1.0e-3, 0.1], when: {optimizer: [sgd]}}
      - {loguniform: [1.0e-5, 3.0e-3], when: {optimizer: [adam, adamw]}}

Every branch has a `when` on the same one searched parameter (its parent), and no two branches
apply to the same parent value; a parent value no branch names leaves the field at its default,
as a `when` does. The study gives each branch its own name (`lr|sgd`, `lr|adam,adamw`), so TPE
never models two ranges as one; the searcher hands trials the field's own name (`lr`).

Every fixed value, choice and range end is checked against TrialConfig here (`check_space`),
so a bad value is one line naming `space.<field>` before Ray starts. Names owned by
registries (augmentations) are checked by `carsweep.search.preflight.config_checks`, which may
import the trainable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from carsweep.config.trial import TrialConfig

if TYPE_CHECKING:  # the checks read a whole sweep; the sweep imports this grammar
    from carsweep.config.sweep import SweepConfig

SAMPLERS = ("choice", "uniform", "loguniform", "int", "fixed")
BRANCHES = "branches"  # the kind of a field given as a list of specs
BRANCH_MARK = "|"  # `lr|sgd,rmsprop`: the study's name for lr's branch for sgd and rmsprop

# Fields that only matter for some optimizers: searched only there, unless `when` says otherwise.
IMPLIED_CONDITIONS: dict[str, dict[str, list[str]]] = {
    "momentum": {"optimizer": ["sgd", "rmsprop"]},
    "nesterov": {"optimizer": ["sgd"]},
}
# Fields (by name prefix) that matter only for augmentation choices including these presets.
PRESET_FIELDS: dict[str, tuple[str, ...]] = {
    "cam_occlusion_": ("cam-occlusion",), "mix_": ("mixup", "cutmix", "snapmix"),
    "mixup_": ("mixup",), "cutmix_": ("cutmix",), "snapmix_": ("snapmix",),
}


class ParamSpec(BaseModel):
    """How one TrialConfig field is set across trials (written in YAML as shown above)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["choice", "uniform", "loguniform", "int", "fixed", "branches"]
    values: list[Any] = Field(default_factory=list, description="choices, or [low, high]; "
                              "for branches, every branch's choices and range ends")
    log: bool = Field(False, description="int ranges only: sample on a log scale")
    when: dict[str, list[Any]] | None = Field(None, description="search only where these hold")
    branches: list[ParamSpec] = Field(
        default_factory=list, description="a list in YAML: one spec (with `when`) per branch")

    @model_validator(mode="wrap")
    @classmethod
    def _values_of_branches(cls, raw: Any, handler: ValidatorFunctionWrapHandler) -> ParamSpec:
        """A branched field's `values` are all its branches' values, so every check that looks
        at the values a trial can get (augmentation names, weights, largest batch) sees them."""
        spec = handler(raw)
        if spec.kind != BRANCHES:
            return spec
        values = [value for branch in spec.branches for value in branch.candidate_values()]
        return spec.model_copy(update={"values": values})

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "kind" in raw:
            return raw  # already normalised (a saved sweep.yaml read back)
        if isinstance(raw, list):
            return {"kind": BRANCHES, "branches": raw}
        if not isinstance(raw, dict):
            return {"kind": "fixed", "values": [raw]}
        samplers = [key for key in raw if key in SAMPLERS]
        extra = sorted(set(raw) - set(SAMPLERS) - {"log", "when"})
        if len(samplers) != 1 or extra:
            raise ValueError(
                f"expected exactly one of {', '.join(SAMPLERS)} (plus optional when, log)"
            )
        kind = samplers[0]
        values = raw[kind]
        values = [values] if kind == "fixed" else values
        if not isinstance(values, list):
            raise ValueError(f"{kind} takes a list, got {values!r}")
        return {"kind": kind, "values": values, "log": raw.get("log", False),
                "when": raw.get("when")}

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.kind == BRANCHES and not self.branches:
            raise ValueError("a list of branches needs at least one branch")
        if self.kind == "choice" and not self.values:
            raise ValueError("choice list is empty; give at least one value")
        if self.kind in ("uniform", "loguniform", "int"):
            if len(self.values) != 2:
                raise ValueError(f"{self.kind} takes [low, high], got {self.values!r}")
            low, high = self.values
            if not low < high:
                raise ValueError(f"{self.kind} range [{low}, {high}] must have low < high")
            if (self.kind == "loguniform" or self.log) and low <= 0:
                raise ValueError(f"log-scale range [{low}, {high}] must have low > 0")
            if self.kind == "int" and not all(isinstance(v, int) for v in self.values):
                raise ValueError(f"int range ends must be integers, got {self.values!r}")
        if self.log and self.kind != "int":
            raise ValueError("`log` applies to int ranges only; use loguniform for floats")
        return self

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    def candidate_values(self) -> list[Any]:
        """The values to check against TrialConfig: every choice, or both ends of a range."""
        return list(self.values)

    def largest(self) -> Any:
        return max(self.values)

    def to_yaml(self) -> Any:
        if self.kind == BRANCHES:
            return [branch.to_yaml() for branch in self.branches]
        if self.kind == "fixed" and not self.when:
            return self.values[0]
        out: dict[str, Any] = {self.kind: self.values[0] if self.kind == "fixed" else self.values}
        if self.log:
            out["log"] = True
        if self.when:
            out["when"] = self.when
        return out


def branch_name(field: str, when: dict[str, list[Any]]) -> str:
    """The study's name for a branch: `lr|sgd,rmsprop` (the field, then its parent's values)."""
    selectors = (",".join(str(value) for value in allowed) for allowed in when.values())
    return BRANCH_MARK.join([field, *selectors])


def field_values(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters keyed by TrialConfig field: `lr|sgd,rmsprop` becomes `lr`."""
    return {name.split(BRANCH_MARK, 1)[0]: value for name, value in params.items()}


@dataclass(frozen=True)
class SearchParam:
    """One parameter of the searcher's study: a searched field, or one branch of a field."""

    name: str  # its name in the study: the field, or the branch's `lr|sgd,rmsprop`
    field: str
    spec: ParamSpec
    when: dict[str, list[Any]]

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether a trial whose other fields take `values` gets this parameter."""
        return holds(self.when, values)


def holds(when: dict[str, list[Any]], values: dict[str, Any]) -> bool:
    """Whether every parameter `when` names takes one of its listed values in `values`."""
    return all(key in values and values[key] in allowed for key, allowed in when.items())


def check_space(config: SweepConfig) -> list[str]:
    """Problems with the space as one-line strings naming `space.<field>`; empty when fine.

    Each value a trial could get is validated as that TrialConfig field (other fields at
    their defaults, so cross-field rules such as warm-up < epochs are left to the trial).
    """
    fields = TrialConfig.model_fields
    problems = []
    for name, spec in config.space.items():
        if name not in fields:
            problems.append(f"space: unknown hyperparameter `{name}`; valid: {', '.join(fields)}")
        elif spec.kind == BRANCHES:
            problems.extend(_branch_problems(config, name, spec))
        else:
            problems.extend(_value_problems(name, spec, f"space.{name}"))
            problems.extend(_condition_problems(config, f"space.{name}", name, spec.when))
    if problems:
        return problems  # points are read against a space that makes sense
    for index, point in enumerate(config.searcher.points_to_evaluate):
        problems.extend(_point_problems(config, index, point))
    return problems


MAX_COMBINATIONS = 50_000  # each check is microseconds; beyond this, trials report it


def combination_problems(config: SweepConfig) -> list[str]:
    """Rules across fields (warm-up < epochs) checked on every combination of the values
    each field can take (choices, range ends; a branched field's from the branch that
    applies), so no sampled trial can break them."""
    plain = {name: spec.candidate_values() for name, spec in config.space.items()
             if spec.kind != BRANCHES}
    branched = [name for name, spec in config.space.items() if spec.kind == BRANCHES]
    widest = [max(len(b.candidate_values()) for b in config.space[n].branches) for n in branched]
    if math.prod(len(v) for v in plain.values()) * math.prod(widest) > MAX_COMBINATIONS:
        return []
    for combination in itertools.product(*plain.values()):
        values = dict(zip(plain, combination, strict=True))
        for chosen in itertools.product(*(_branch_options(config, n, values) for n in branched)):
            try:
                TrialConfig.model_validate(values | {k: v for part in chosen for k, v in
                                                     part.items()})
            except ValidationError as error:
                message = error.errors()[0]["msg"].removeprefix("Value error, ")
                return [f"space: some trials would be invalid: {message}"]
    return []


def _branch_options(config: SweepConfig, name: str, values: dict[str, Any]) -> list[dict]:
    """The values branched `name` can take beside `values`, each as {name: value}; [{}] where
    no branch applies (the field keeps its default)."""
    found = config.branch(name, values)
    if found is None:
        return [{}]
    return [{name: value} for value in found[1].candidate_values()]


def _field_error(name: str, value: Any) -> str | None:
    try:
        TrialConfig.model_validate({name: value})
    except ValidationError as error:
        for detail in error.errors():
            if tuple(detail["loc"]) == (name,):
                return detail["msg"].removeprefix("Value error, ")
    return None


def _value_problems(name: str, spec: ParamSpec, where: str) -> list[str]:
    """The first of the spec's values that is not a valid `name` (e.g. where = space.lr[1])."""
    for value in spec.candidate_values():
        message = _field_error(name, value)
        if message:
            return [f"`{where}` = {value!r} is invalid: {message}"]
    return []


def _condition_problems(config: SweepConfig, where: str, name: str,
                        when: dict[str, list[Any]] | None) -> list[str]:
    problems = []
    for parent, allowed in (when or {}).items():
        if parent == name or parent not in config.space:
            problems.append(
                f"`{where}.when`: `{parent}` is not another parameter of the space"
            )
        elif config.space[parent].kind == "choice":
            unknown = [v for v in allowed if v not in config.space[parent].values]
            if unknown:
                problems.append(
                    f"`{where}.when.{parent}` = {unknown!r} are not among its choices "
                    f"{config.space[parent].values!r}"
                )
    return problems


def _branch_problems(config: SweepConfig, name: str, spec: ParamSpec) -> list[str]:
    """Each branch valid as a spec of its own, all selected by one searched parent, with no
    parent value in two branches."""
    for index, branch in enumerate(spec.branches):
        where = f"space.{name}[{index}]"
        if branch.kind == BRANCHES:
            return [f"`{where}` is a list; a branch is one spec (choice, range or fixed) "
                    "with `when`"]
        if not branch.when:
            return [f"`{where}` has no `when`; each branch says which trials it is for, "
                    "e.g. when: {optimizer: [adam]}"]
        problems = (_value_problems(name, branch, where)
                    or _condition_problems(config, where, name, branch.when))
        if problems:
            return problems
    parents = sorted({parent for branch in spec.branches for parent in branch.when})
    if len(parents) > 1:
        return [f"`space.{name}`: its branches are selected by {', '.join(parents)}; every "
                f"branch of {name} must be selected by the same one parameter"]
    return _parent_problems(config, name, parents[0]) or _overlap_problems(name, spec)


def _parent_problems(config: SweepConfig, name: str, parent: str) -> list[str]:
    parent_spec = config.space[parent]
    if not parent_spec.searched:
        return [f"`space.{name}`: its branches are selected by `{parent}`, which is fixed; "
                f"search {parent} (e.g. a choice) or give {name} one spec"]
    if parent_spec.kind == BRANCHES:
        return [f"`space.{name}`: its branches are selected by `{parent}`, which has "
                "branches itself; select them by a parameter with one spec"]
    slashed = [value for value in config.conditions(name)[parent] if "/" in str(value)]
    if slashed:
        return [f"`space.{name}`: a branch cannot be selected by {slashed[0]!r} (Ray reads "
                "'/' in a parameter name as nesting); select the branches by another parameter"]
    return []


def _overlap_problems(name: str, spec: ParamSpec) -> list[str]:
    seen: dict[Any, int] = {}
    for index, branch in enumerate(spec.branches):
        ((parent, allowed),) = branch.when.items()
        for value in allowed:
            if value in seen:
                return [f"`space.{name}[{seen[value]}]` and `space.{name}[{index}]` overlap: "
                        f"both apply where {parent} is {value!r}; give each value of "
                        f"{parent} at most one branch"]
            seen[value] = index
    return []


def _point_problems(config: SweepConfig, index: int, point: dict[str, Any]) -> list[str]:
    searched = config.searched()
    where = f"`searcher.points_to_evaluate[{index}]`"
    for key, value in point.items():
        if key not in searched:
            return [f"{where}: `{key}` is not a searched parameter; searched: "
                    f"{', '.join(searched) or 'none'}"]
        spec, of = searched[key], ""
        if spec.kind == BRANCHES:
            (parent,) = config.conditions(key)
            found = config.branch(key, point)
            if parent not in point:
                return [f"{where}: `{key}` has a branch per {parent}; give {parent} too"]
            if found is None:
                return [f"{where}.{key} = {value!r} is invalid: no branch of `space.{key}` "
                        f"applies where {parent} is {point[parent]!r}"]
            spec, of = found[1], f" of `space.{key}[{found[0]}]`"
        message = _field_error(key, value) or _outside(spec, value)
        if message:
            return [f"{where}.{key} = {value!r} is invalid: {message}{of}"]
    return []


def _outside(spec: ParamSpec, value: Any) -> str | None:
    if spec.kind == "fixed" and value != spec.values[0]:
        return f"not the fixed value {spec.values[0]!r}"
    if spec.kind == "choice" and value not in spec.values:
        return f"not one of the choices {spec.values!r}"
    if spec.kind not in ("choice", "fixed") and not spec.values[0] <= value <= spec.values[1]:
        return f"outside the range {spec.values!r}"
    return None
