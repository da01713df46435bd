"""A sweep: its space over TrialConfig fields, the searcher, ASHA, resources, storage.

The space's grammar (fixed values, choices, ranges, `when`, branches) and its checks are in
carsweep/config/space.py; this module holds the whole sweep as written in configs/*.yaml, its
ASHA arithmetic, and `load_sweep`, which runs every check that needs more than one field.
"""

from __future__ import annotations

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
from carsweep.config.space import (
    BRANCHES,
    IMPLIED_CONDITIONS,
    PRESET_FIELDS,
    ParamSpec,
    SearchParam,
    branch_name,
    check_space,
    combination_problems,
    holds,
)
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.storage import location

# The numbers `trainable.train` reports every epoch (besides the text `precision`); the
# sweep's metric must be one of them.
REPORTED_METRICS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5",
    "images_per_s", "lr", "epoch_time_s",
)
# What a trial whose loss became NaN/inf reports last (carsweep.search.trial): the epoch, the
# sweep's metric at its worst, and these two. Every reported metric is >= 0, so 0.0 is the
# worst for mode max; for mode min it is +inf.
DIVERGED, DIVERGED_MESSAGE = "diverged", "diverged_message"


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


class PashaConfig(BaseModel):
    """PASHA (Bohdal et al. 2023, https://openreview.net/forum?id=syfgJE6nFRW): ASHA's rungs
    (the `asha` settings), with a maximum that starts at the second rung and grows by one rung
    only while the ranking of the best trials changes (carsweep/search/pasha.py)."""

    model_config = ConfigDict(extra="forbid")

    epsilon_percentile: float = Field(
        90.0, gt=0, le=100, description="ε, below which two trials rank the same, is this "
        "percentile of the gaps of trials that swapped places and back (the paper's 90)")


class MedianConfig(BaseModel):
    """Ray's MedianStoppingRule (Golovin et al. 2017, Google Vizier), per epoch: from the grace
    period on, a trial whose best metric so far is worse than the median of the other trials'
    running averages up to its epoch stops (carsweep/search/median.py)."""

    model_config = ConfigDict(extra="forbid")

    grace_period: int | None = Field(
        None, ge=1, description="epochs before a trial can stop; default a quarter of max_t "
        "(the replay of recorded curves: BENCHMARKS.md)")
    min_samples_required: int = Field(
        3, ge=1, description="other trials that must have reached the epoch for a comparison")


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
    scheduler: Literal["asha", "pasha", "median", "fifo"] = Field(
        "asha", description="asha stops early; pasha pauses at ASHA's rungs and trains only as "
        "far as the ranking needs; median stops a trial worse than the others' median, keeping "
        "more slow starters than asha at about twice its GPU-hours; fifo never stops")
    asha: AshaConfig = Field(default_factory=AshaConfig)
    pasha: PashaConfig = Field(default_factory=PashaConfig)
    median: MedianConfig = Field(default_factory=MedianConfig)
    searcher: SearcherConfig = Field(default_factory=SearcherConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    space: dict[str, ParamSpec] = Field(default_factory=dict, description="TrialConfig fields")

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str) -> str:
        # A name with a separator or `..` would put the experiment outside storage_path.
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError("it names a folder inside storage_path: one folder name, without "
                             "/ or \\ and not . or ..")
        return name

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

    def rung_epochs(self) -> list[int]:
        """The epochs where ASHA or PASHA may stop or pause a trial (none for fifo and median,
        which has no rungs): the rungs below max_t, then max_t."""
        if self.scheduler in ("fifo", "median"):
            return []
        return [epoch for epoch, _ in self.asha_rungs()]

    def median_grace(self) -> int:
        """The epoch from which the median stopping rule compares: as set, else a quarter of
        max_t."""
        return self.median.grace_period or max(1, self.max_t // 4)

    def searched(self) -> dict[str, ParamSpec]:
        """The fields that vary across trials (a branched field counts once, by its field)."""
        return {name: spec for name, spec in self.space.items() if spec.searched}

    def listed_values(self, name: str) -> list[Any]:
        """The values the space lists for field `name` (its fixed value, choices, range ends,
        every branch's) as a trial reads them, or TrialConfig's default where the space leaves
        it out."""
        spec = self.space.get(name)
        if spec is None:
            return [TrialConfig.model_fields[name].default]
        return [_as_trial_reads(name, value) for value in spec.values]

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


def _as_trial_reads(name: str, value: Any) -> Any:
    """`value` as a trial's TrialConfig reads it (YAML's bare `off` is False until then); a
    value it refuses is left as written, for the space check to name."""
    try:
        return getattr(TrialConfig.model_validate({name: value}), name)
    except ValidationError:
        return value


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
        data.setdefault("name", Path(location(path).name).stem)
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
        problems.extend(combination_problems(config))
    if config.asha.grace_period > config.max_t:
        problems.append(
            f"`asha.grace_period` is {config.asha.grace_period}, but must be <= max_t "
            f"({config.max_t}, {'asha.max_t' if config.asha.max_t else 'the largest epochs'})"
        )
    return problems


def save_sweep(config: SweepConfig, path: Path) -> None:
    """Write the resolved sweep as YAML (the same form it is read from), atomically."""
    text = yaml.safe_dump(config.to_yaml_dict(), sort_keys=False)
    write_text_atomic(path, text)
