"""The checks of a sweep's config that need no Ray: schema, space, augmentations and models,
the dataset, storage, start weights, the scheduler's rungs and the schedule warnings. A sweep
that cannot work stops here, in one line, before Ray starts.

The schedule warnings follow one rule: at each rung below max_t, ASHA ranks trials by their
metric at that epoch (the median rule compares them at every epoch from its grace period on),
which is only a fair ranking when every trial is at the same point of its lr schedule there.
It is not when, with a rung (a compared epoch) below max_t:

    epochs          is searched and cosine is possible: a shorter cosine has decayed further
                    at every rung, so ASHA keeps short schedules
    warmup_epochs   can be >= grace_period: those trials are still warming up at the first rung
    freeze_backbone_epochs  can be >= grace_period: their backbone has not trained by then
    lr_schedule     can be more than one shape: at a rung they have decayed by different amounts
    step_size       with lr_schedule step possible: the number of decays a trial has had by
                    some rung differs across the step_size and warmup_epochs values (e.g.
                    step_size searched, or a warm-up range that moves a decay across a rung)
"""

from __future__ import annotations

import math
import secrets
import tempfile
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carsweep.config.sweep import SweepConfig, sweep_problems
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.storage import BucketPath, is_bucket, location

if TYPE_CHECKING:
    from carsweep.search.preflight.report import Report


def check_sweep(config: SweepConfig) -> None:
    """Schema-level problems, then every augmentation and model a trial could get, then the
    data."""
    problems = sweep_problems(config)
    if problems:
        raise UserError(problems[0])
    check_augmentations(config)
    check_models(config)
    check_cuda_has_gpus(config)
    check_dataset(config.dataset)


def check_augmentations(config: SweepConfig) -> None:
    """Each augmentation value (fixed or choice) must name presets the trainable knows, each
    taking every input size of the space."""
    spec = config.space.get("augmentation")
    if spec is None:
        return
    from carsweep.trainable import check_augmentation

    for name, resize in product(config.listed_values("augmentation"),
                                config.listed_values("resize")):
        try:
            check_augmentation(name, resize=resize)
        except UserError as error:
            raise UserError(f"space: {error}") from None


def check_models(config: SweepConfig) -> None:
    """Each model a trial could get must be torchvision's and take every input size of the
    space (its choices, a range's ends) and every augmentation (snapmix needs a linear head)."""
    from carsweep.trainable import check_backbone

    for model, resize, augmentation in product(config.listed_values("model"),
                                               config.listed_values("resize"),
                                               config.listed_values("augmentation")):
        try:
            check_backbone(model, resize=resize, augmentation=augmentation)
        except UserError as error:
            raise UserError(f"space: {error}") from None


def check_cuda_has_gpus(config: SweepConfig) -> None:
    """`device: cuda` with no GPU per trial would fail every trial at its start: say so now."""
    spec = config.space.get("device")
    if spec is None or "cuda" not in spec.values or config.resources.gpu > 0:
        return
    raise UserError("`space.device` can be 'cuda', but `resources.gpu` is 0, so trials get no "
                    "GPU; set resources.gpu (e.g. 1 or 0.5) or device: auto")


def check_dataset(dataset: str | None) -> None:
    """The driver must at least see a prepared dataset (a folder, or a bucket URI); trials
    re-check on their own node."""
    if dataset is None:
        raise UserError("no dataset: give --data DATASET or `dataset:` in the sweep config")
    load_dataset(dataset)  # a UserError naming the folder if it is not a prepared one


def check_storage_writable(storage: Path) -> None:
    """The storage folder (or the nearest folder above it that exists) must take a new file."""
    problem = storage_problem(str(storage))
    if problem:
        raise UserError(f"{problem}; give --storage a folder you can write to")


def storage_problem(storage: str) -> str | None:
    """None if a file can be created where the experiment will go; the probe file is removed,
    and folders that do not exist yet are not created (the check writes nothing). Run on the
    driver before Ray starts, and on every node by the pre-flight probes. In a bucket: a probe
    object is written and deleted, with this node's own credentials."""
    target = location(storage)
    if is_bucket(target):
        return _bucket_problem(target)
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"storage path {storage} is not writable ({existing} is not a folder)"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".carsweep-probe-"):
            pass
    except OSError as error:
        return f"storage path {storage} is not writable ({error.strerror} in {existing})"
    return None


def _bucket_problem(target: BucketPath) -> str | None:
    probe = target / f".carsweep-probe-{secrets.token_hex(4)}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as error:  # a StorageError names the URI and what the store said
        return f"storage path {target} is not writable: {error}"
    return None


# Start weights ----------------------------------------------------------------------------

def check_weights(config: SweepConfig, report: Report) -> None:
    """Every start-weights source of the space loads (safely), as the launch will load it;
    ImageNet's say the size they were trained at, a hint for `resize`."""
    from carsweep.search.sweep_inputs import shipped_weights
    from carsweep.trainable.backbones import preprocessing
    from carsweep.trainable.model import IMAGENET

    try:
        loaded = shipped_weights(config)
    except UserError as error:
        report.failed("weights", str(error))
        return
    named = [f"{source} for {model}"
             + (f" (trained at {preprocessing(model).crop_size} px)" if source == IMAGENET
                else "") for model, source in loaded]
    report.passed("weights", ", ".join(named) + " loaded" if loaded else "none (from scratch)")


# The scheduler ----------------------------------------------------------------------------

def check_scheduler(config: SweepConfig, report: Report) -> None:
    if config.scheduler == "fifo":
        report.passed("scheduler", "fifo, no early stopping: every trial runs its epochs")
        return
    if config.scheduler == "median":
        _median_rule(config, report)
        return
    grace, rf, max_t = config.asha.grace_period, config.asha.reduction_factor, config.max_t
    if grace > max_t:
        report.failed("scheduler", f"`asha.grace_period` is {grace}, but must be <= max_t "
                      f"({max_t})")
        return
    if not rf > 1:
        report.failed("scheduler", f"`asha.reduction_factor` is {rf:g}, but must be > 1")
        return
    rungs = config.asha_rungs()
    if config.scheduler == "pasha":
        _pasha_ladder(config, report, rungs)
        return
    stops = len(rungs) - 1
    note = "" if stops else " (no rung below max_t: ASHA will stop no trial)"
    report.passed("scheduler", f"asha, grace {grace}, reduction factor {rf:g}, max_t {max_t}: "
                  f"{stops} rung(s) where trials can stop{note}")
    report.lines.append("        epoch  trials expected to reach it")
    for epoch, trials in rungs:
        where = "  (max_t)" if epoch == max_t else ""
        report.lines.append(f"        {epoch:>5}  {trials:.1f} of {config.num_samples}{where}")


def _median_rule(config: SweepConfig, report: Report) -> None:
    grace, max_t = config.median_grace(), config.max_t
    if grace > max_t:
        report.failed("scheduler", f"`median.grace_period` is {grace}, but must be <= max_t "
                      f"({max_t})")
        return
    report.passed("scheduler", f"median stopping: from epoch {grace} of {max_t}, a trial "
                  f"whose best {config.metric} is worse than the median of the other trials' "
                  f"running averages stops (compared once "
                  f"{config.median.min_samples_required} others reached its epoch)")


def _pasha_ladder(config: SweepConfig, report: Report, rungs: list[tuple[int, float]]) -> None:
    """PASHA's ladder is ASHA's; where it starts is the second level (search/pasha.py)."""
    epochs = [epoch for epoch, _ in rungs]
    start = epochs[min(1, len(epochs) - 1)]
    report.passed("scheduler", f"pasha: rungs at {', '.join(map(str, epochs[:-1])) or 'none'} "
                  f"(grace {config.asha.grace_period}, reduction factor "
                  f"{config.asha.reduction_factor:g}), max_t {config.max_t}; trials pause at "
                  f"each rung. The maximum starts at epoch {start} and grows a rung at a time, "
                  f"up to {config.max_t}, only while the best trials' ranking changes "
                  f"(ε: the {config.pasha.epsilon_percentile:g}th percentile of swapped gaps)")
    report.lines.append("        epoch  trials expected to reach it if the maximum grows there")
    for epoch, trials in rungs:
        where = "  (the starting maximum)" if epoch == start else (
            "  (max_t)" if epoch == config.max_t else "")
        report.lines.append(f"        {epoch:>5}  {trials:.1f} of {config.num_samples}{where}")


def check_schedules(config: SweepConfig, report: Report) -> None:
    """One warning per way trials can reach a point where the scheduler compares them at
    different points of their lr schedule (the rule is in the module docstring)."""
    if config.scheduler == "median":  # it compares at every epoch from its grace period on
        grace = config.median_grace()
        compared = list(range(grace, config.max_t))
        who, point, setting = "the median rule", "compared epoch", "median.grace_period"
    else:
        compared, grace = config.rung_epochs()[:-1], config.asha.grace_period
        who, point, setting = "ASHA", "rung", "asha.grace_period"
    if not compared:
        return
    epochs, warmup = _possible(config, "epochs"), _possible(config, "warmup_epochs")
    schedules = _possible(config, "lr_schedule")
    if len(epochs) > 1 and "cosine" in schedules:
        report.warned("schedules", f"`epochs` is searched ({_listed(epochs)}) with a cosine "
                      f"schedule: at every {point} a shorter schedule has decayed further, so "
                      f"{who} keeps short runs; fix epochs at max_t ({config.max_t}) and let "
                      f"{who} stop trials")
    for name, what in (("warmup_epochs", "still warming up"),
                       ("freeze_backbone_epochs", "training only the head")):
        longest = max(_possible(config, name))
        if longest >= grace:
            report.warned("schedules", f"`{name}` can be {longest}, so some trials are {what} "
                          f"at the first {point} (epoch {grace}); keep {name} below "
                          f"{setting} ({grace}) or raise the grace period")
    if len(schedules) > 1:
        report.warned("schedules", f"`lr_schedule` is searched ({_listed(schedules)}): at a "
                      f"{point} the shapes have decayed by different amounts, so {who} compares "
                      "shapes, not settings; fix lr_schedule (cosine suits fine-tuning)")
    if "step" in schedules:
        _warn_uneven_step_decays(config, report, compared, warmup, point)


def _warn_uneven_step_decays(config: SweepConfig, report: Report, rungs: list[int],
                             warmup: list[int], point: str) -> None:
    """Step decays happen at warm-up + k * step_size; the count before a rung's evaluation
    must not depend on the trial."""
    step_sizes = _possible(config, "step_size")
    for rung in rungs:
        counts = sorted({_decays_before(rung, w, s) for w in warmup for s in step_sizes})
        if len(counts) > 1:
            report.warned("schedules", f"with lr_schedule step, trials reach the {point} at epoch "
                          f"{rung} after {' or '.join(map(str, counts))} decays (step_size "
                          f"{_listed(step_sizes)}, warmup_epochs {_listed(warmup)}); fix "
                          "step_size and warmup_epochs so every trial has decayed as often")
            return


def _decays_before(rung: int, warmup: int, step_size: int) -> int:
    """Decays in effect during epoch `rung` (one lands after epoch warm-up + k * step_size)."""
    return max(0, math.ceil((rung - warmup) / step_size) - 1)


def _possible(config: SweepConfig, name: str) -> list[Any]:
    """Every value a trial can take for `name`: its choices, every integer of an int range,
    the default where the space leaves it out."""
    spec = config.space.get(name)
    if spec is None:
        return [TrialConfig.model_fields[name].default]
    if spec.kind == "branches":
        return list(dict.fromkeys(v for b in spec.branches for v in _spec_values(b)))
    return _spec_values(spec)


def _spec_values(spec) -> list[Any]:
    if spec.kind == "int":
        return list(range(spec.values[0], spec.values[1] + 1))
    return list(spec.candidate_values())


def _listed(values: list[Any]) -> str:
    """`15, 30`; a run of four or more integers as `0..5`."""
    if len(values) > 3 and values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))
