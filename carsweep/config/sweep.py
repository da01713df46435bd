"""A sweep: the search space over TrialConfig fields, the searcher, ASHA, resources, storage.

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

Every fixed value, choice and range end is checked against TrialConfig here, so a bad value is
one line naming `space.<field>` before Ray starts. Names owned by registries (augmentations)
are checked by `carsweep.search.validate`, which may import the trainable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from carsweep.config.io import apply_overrides, read_yaml, validate, write_text_atomic
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError

# The numbers `trainable.train` reports every epoch (besides the text `precision`); the
# sweep's metric must be one of them.
REPORTED_METRICS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5",
    "images_per_s", "lr", "epoch_time_s",
)
SAMPLERS = ("choice", "uniform", "loguniform", "int", "fixed")
BRANCHES = "branches"  # the kind of a field given as a list of specs
BRANCH_MARK = "|"  # `lr|sgd,rmsprop`: the study's name for lr's branch for sgd and rmsprop
# What a trial whose loss became NaN/inf reports last (carsweep.search.trial): the epoch, the
# sweep's metric at its worst, and these two. Every reported metric is >= 0, so 0.0 is the
# worst for mode max; for mode min it is +inf.
DIVERGED, DIVERGED_MESSAGE = "diverged", "diverged_message"

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


class Resources(BaseModel):
    """What one trial asks Ray for; fractional GPUs (0.25) let several trials share one GPU."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(1.0, gt=0, description="CPU cores per trial")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; below 1 shares a GPU")

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> Resources:
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu is {self.gpu}, but above 1 it must be a whole number")
        return self


class SearcherConfig(BaseModel):
    """Optuna's sampler: TPE (seeded) or random, and configurations to try first."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler")
    seed: int = Field(0, ge=0, description="seeds the sampler")
    n_startup_trials: int = Field(10, ge=0, description="random trials before TPE models the space")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="configurations tried first (e.g. a known-good one)"
    )


class AshaConfig(BaseModel):
    """ASHA (Li et al. 2020, https://arxiv.org/abs/1810.05934): stop trials at rungs.

    A trial reaching epoch grace_period * reduction_factor**k continues only if its metric is
    in the top 1/reduction_factor of the trials that reached that rung.
    """

    model_config = ConfigDict(extra="forbid")

    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can stop")
    reduction_factor: float = Field(2, gt=1, description="keep the best 1/rf at each rung")
    max_t: int | None = Field(None, ge=1, description="last rung; default the largest epochs")


class ClusterConfig(BaseModel):
    """Where Ray runs: a local Ray for the sweep, or an existing cluster."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="'auto' or HOST:PORT joins a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all)")
    dashboard: bool = Field(False, description="start Ray's dashboard (local Ray only)")
    dashboard_host: str = Field("127.0.0.1", description="the dashboard's bind address")


class SweepConfig(BaseModel):
    """A whole sweep, as written in configs/*.yaml and saved as sweep.yaml beside the results."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", min_length=1, description="experiment folder name")
    dataset: str | None = Field(None, description="prepared dataset folder every node can read")
    storage_path: str = Field("results", min_length=1, description="folder or URI (s3://, gs://)")
    metric: str = Field("val_top1", description="what the search optimises")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    num_samples: int = Field(8, ge=1, description="trials to run")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as resources allow")
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(1, ge=0, description="retries of a failed trial, from its checkpoint")
    checkpoint_every_min: float = Field(
        10.0, ge=0, description="besides ASHA's rungs and a trial's last epoch, checkpoint at "
        "most every N minutes (0: every epoch); a trial moved off a lost node redoes at most "
        "that much")
    scheduler: Literal["asha", "fifo"] = Field("asha", description="asha stops early; fifo never")
    asha: AshaConfig = Field(default_factory=AshaConfig)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    space: dict[str, ParamSpec] = Field(default_factory=dict, description="TrialConfig fields")

    @field_validator("metric")
    @classmethod
    def _reported(cls, metric: str) -> str:
        if metric not in REPORTED_METRICS:
            raise ValueError(f"valid metrics: {', '.join(REPORTED_METRICS)}")
        return metric

    @model_validator(mode="wrap")
    @classmethod
    def _branches_named_as_written(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A bad branch is `space.lr[1]`, as the YAML list writes it (pydantic's location is
        space, lr, branches, 1)."""
        try:
            return handler(data)
        except ValidationError as error:
            details = [{**detail, "loc": _without_branches(detail["loc"])}
                       for detail in error.errors(include_url=False)]
            raise ValidationError.from_exception_data(error.title, details) from None

    @property
    def max_t(self) -> int:
        """ASHA's last rung: as set, else the largest epochs any trial can have."""
        if self.asha.max_t is not None:
            return self.asha.max_t
        epochs = self.space.get("epochs")
        return int(epochs.largest()) if epochs else TrialConfig.model_fields["epochs"].default

    def asha_rungs(self) -> list[tuple[int, float]]:
        """(epoch, trials expected to reach it) for each of ASHA's rungs below max_t, then max_t.

        The rungs are Ray's (grace * rf**k while below max_t); at each, ASHA keeps the best
        1/rf, so about num_samples / rf**k trials reach rung k. Asynchronous promotion lets a
        few more through early in a sweep: these are expectations, not promises.
        """
        grace, rf = self.asha.grace_period, self.asha.reduction_factor
        rungs, k = [], 0
        while grace * rf**k < self.max_t:
            rungs.append((int(grace * rf**k), self.num_samples / rf**k))
            k += 1
        rungs.append((self.max_t, self.num_samples / rf**k))
        return rungs

    def searched(self) -> dict[str, ParamSpec]:
        """The fields that vary across trials (a branched field counts once, by its field)."""
        return {name: spec for name, spec in self.space.items() if spec.searched}

    def listed_values(self, name: str) -> list[Any]:
        """The values the space lists for field `name` (its fixed value, choices, range ends,
        every branch's), or TrialConfig's default where the space leaves it out."""
        spec = self.space.get(name)
        return list(spec.values) if spec is not None else [TrialConfig.model_fields[name].default]

    def fixed(self) -> dict[str, Any]:
        return {name: spec.values[0] for name, spec in self.space.items() if not spec.searched}

    def conditions(self, name: str) -> dict[str, list[Any]]:
        """The `when` of a parameter, explicit or implied (momentum only for sgd/rmsprop); for
        a branched field, its parent and every value some branch names."""
        spec = self.space[name]
        if spec.kind == BRANCHES:
            merged: dict[str, list[Any]] = {}
            for branch in spec.branches:
                for parent, allowed in (branch.when or {}).items():
                    merged.setdefault(parent, []).extend(allowed)
            return merged
        if spec.when is not None:
            return spec.when
        implied = IMPLIED_CONDITIONS.get(name, {})
        presets = next((p for prefix, p in PRESET_FIELDS.items() if name.startswith(prefix)), ())
        if presets and "augmentation" in self.space:
            choices = self.space["augmentation"].values
            using = [v for v in choices if set(presets) & set(str(v).split("+"))]
            implied = {"augmentation": using} if using else {}
        return {key: allowed for key, allowed in implied.items()
                if key in self.space and self.space[key].searched}

    def parameters(self) -> list[SearchParam]:
        """The study's parameters, a parent before the fields its value selects: one per
        searched field, one per branch of a branched field (fixed branches included: the
        space returns their value where they apply instead of suggesting it)."""
        params = []
        for name, spec in self.searched().items():
            if spec.kind == BRANCHES:
                params += [SearchParam(branch_name(name, branch.when or {}), name, branch,
                                       branch.when or {}) for branch in spec.branches]
            else:
                params.append(SearchParam(name, name, spec, self.conditions(name)))
        parents = {parent for param in params for parent in param.when}
        return sorted(params, key=lambda param: param.field not in parents)  # stable

    def branch(self, name: str, values: dict[str, Any]) -> tuple[int, ParamSpec] | None:
        """(index, spec) of the branch of `name` that applies where the other fields take
        `values`; None where none does."""
        for index, branch in enumerate(self.space[name].branches):
            if holds(branch.when or {}, values):
                return index, branch
        return None

    def searcher_point(self, point: dict[str, Any]) -> dict[str, Any]:
        """A `points_to_evaluate` entry under the study's names: a branched field's value
        under the name of the branch the point's parent value selects (none for a fixed
        branch: the space returns that value itself)."""
        named = {}
        for key, value in point.items():
            if key not in self.space or self.space[key].kind != BRANCHES:
                named[key] = value
                continue
            found = self.branch(key, point)
            if found is not None and found[1].searched:
                named[branch_name(key, found[1].when)] = value
        return named

    def to_yaml_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"space"})
        data["space"] = {name: spec.to_yaml() for name, spec in self.space.items()}
        return data


def _without_branches(loc: tuple) -> tuple:
    """(space, lr, branches, 1, ...) -> (space, lr, 1, ...)."""
    return tuple(part for index, part in enumerate(loc)
                 if not (part == BRANCHES and index >= 2 and loc[0] == "space"))


def load_sweep(path: Path | None, overrides: list[str] = ()) -> SweepConfig:
    """Defaults, YAML, `--set` overrides, then the whole-sweep checks: one UserError line.

    The experiment name defaults to the YAML file's stem (configs/demo.yaml -> demo).
    """
    data = read_yaml(path) if path is not None else {}
    if path is not None:
        data.setdefault("name", Path(path).stem)
    source = str(path) if path is not None else "config"
    config = validate(SweepConfig, apply_overrides(data, list(overrides)), source)
    problems = sweep_problems(config)
    if problems:
        raise UserError(f"{path or 'config'}: {problems[0]}")
    return config


def sweep_problems(config: SweepConfig) -> list[str]:
    """Every problem that needs more than one field to see, as one-line strings."""
    problems = check_space(config)
    if not problems:
        problems.extend(_combination_problems(config))
    if config.asha.grace_period > config.max_t:
        problems.append(
            f"`asha.grace_period` is {config.asha.grace_period}, but must be <= max_t "
            f"({config.max_t}, {'asha.max_t' if config.asha.max_t else 'the largest epochs'})"
        )
    return problems


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


def _combination_problems(config: SweepConfig) -> list[str]:
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


def save_sweep(config: SweepConfig, path: Path) -> None:
    """Write the resolved sweep as YAML (the same form it is read from), atomically."""
    text = yaml.safe_dump(config.to_yaml_dict(), sort_keys=False)
    write_text_atomic(Path(path), text)
