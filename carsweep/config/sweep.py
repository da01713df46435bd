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

Every fixed value, choice and range end is checked against TrialConfig here, so a bad value is
one line naming `space.<field>` before Ray starts. Names owned by registries (augmentations)
are checked by `carsweep.search.validate`, which may import the trainable.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
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

# Fields that only matter for some optimizers: searched only there, unless `when` says otherwise.
IMPLIED_CONDITIONS: dict[str, dict[str, list[str]]] = {
    "momentum": {"optimizer": ["sgd", "rmsprop"]},
    "nesterov": {"optimizer": ["sgd"]},
}
# The cam_occlusion_* fields matter only for augmentation choices that include cam-occlusion.
CAM_OCCLUSION_PREFIX, CAM_OCCLUSION = "cam_occlusion_", "cam-occlusion"


class ParamSpec(BaseModel):
    """How one TrialConfig field is set across trials (written in YAML as shown above)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["choice", "uniform", "loguniform", "int", "fixed"]
    values: list[Any] = Field(default_factory=list, description="choices, or [low, high]")
    log: bool = Field(False, description="int ranges only: sample on a log scale")
    when: dict[str, list[Any]] | None = Field(None, description="search only where these hold")

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "kind" in raw:
            return raw  # already normalised (a saved sweep.yaml read back)
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
        if self.kind == "fixed" and not self.when:
            return self.values[0]
        out: dict[str, Any] = {self.kind: self.values[0] if self.kind == "fixed" else self.values}
        if self.log:
            out["log"] = True
        if self.when:
            out["when"] = self.when
        return out


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
        return {name: spec for name, spec in self.space.items() if spec.searched}

    def fixed(self) -> dict[str, Any]:
        return {name: spec.values[0] for name, spec in self.space.items() if not spec.searched}

    def conditions(self, name: str) -> dict[str, list[Any]]:
        """The `when` of a parameter, explicit or implied (momentum only for sgd/rmsprop)."""
        spec = self.space[name]
        if spec.when is not None:
            return spec.when
        implied = IMPLIED_CONDITIONS.get(name, {})
        if name.startswith(CAM_OCCLUSION_PREFIX) and "augmentation" in self.space:
            choices = self.space["augmentation"].values
            using = [v for v in choices if CAM_OCCLUSION in str(v).split("+")]
            implied = {"augmentation": using} if using else {}
        return {key: allowed for key, allowed in implied.items()
                if key in self.space and self.space[key].searched}

    def to_yaml_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"space"})
        data["space"] = {name: spec.to_yaml() for name, spec in self.space.items()}
        return data


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
            continue
        for value in spec.candidate_values():
            message = _field_error(name, value)
            if message:
                problems.append(f"`space.{name}` = {value!r} is invalid: {message}")
                break
        problems.extend(_condition_problems(config, name, spec))
    for index, point in enumerate(config.searcher.points_to_evaluate):
        problems.extend(_point_problems(config, index, point))
    return problems


MAX_COMBINATIONS = 50_000  # each check is microseconds; beyond this, trials report it


def _combination_problems(config: SweepConfig) -> list[str]:
    """Rules across fields (warm-up < epochs) checked on every combination of the values
    each field can take (choices, range ends), so no sampled trial can break them."""
    names = list(config.space)
    options = [config.space[name].candidate_values() for name in names]
    if math.prod(len(values) for values in options) > MAX_COMBINATIONS:
        return []
    for combination in itertools.product(*options):
        values = dict(zip(names, combination, strict=True))
        try:
            TrialConfig.model_validate(values)
        except ValidationError as error:
            message = error.errors()[0]["msg"].removeprefix("Value error, ")
            return [f"space: some trials would be invalid: {message}"]
    return []


def _field_error(name: str, value: Any) -> str | None:
    try:
        TrialConfig.model_validate({name: value})
    except ValidationError as error:
        for detail in error.errors():
            if tuple(detail["loc"]) == (name,):
                return detail["msg"].removeprefix("Value error, ")
    return None


def _condition_problems(config: SweepConfig, name: str, spec: ParamSpec) -> list[str]:
    problems = []
    for parent, allowed in (spec.when or {}).items():
        if parent == name or parent not in config.space:
            problems.append(
                f"`space.{name}.when`: `{parent}` is not another parameter of the space"
            )
        elif config.space[parent].kind == "choice":
            unknown = [v for v in allowed if v not in config.space[parent].values]
            if unknown:
                problems.append(
                    f"`space.{name}.when.{parent}` = {unknown!r} are not among its choices "
                    f"{config.space[parent].values!r}"
                )
    return problems


def _point_problems(config: SweepConfig, index: int, point: dict[str, Any]) -> list[str]:
    searched = config.searched()
    where = f"`searcher.points_to_evaluate[{index}]`"
    for key, value in point.items():
        if key not in searched:
            return [f"{where}: `{key}` is not a searched parameter; searched: "
                    f"{', '.join(searched) or 'none'}"]
        message = _field_error(key, value) or _outside(searched[key], value)
        if message:
            return [f"{where}.{key} = {value!r} is invalid: {message}"]
    return []


def _outside(spec: ParamSpec, value: Any) -> str | None:
    if spec.kind == "choice" and value not in spec.values:
        return f"not one of the choices {spec.values!r}"
    if spec.kind != "choice" and not spec.values[0] <= value <= spec.values[1]:
        return f"outside the range {spec.values!r}"
    return None


def save_sweep(config: SweepConfig, path: Path) -> None:
    """Write the resolved sweep as YAML (the same form it is read from), atomically."""
    text = yaml.safe_dump(config.to_yaml_dict(), sort_keys=False)
    write_text_atomic(Path(path), text)
