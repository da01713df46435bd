"""The checks of the pre-flight (search/preflight.py runs them in order and prints the
report): each fills the Report with its lines, `passed`, `warned` or `failed`.

The schedule warnings follow one rule: at each rung below max_t, ASHA ranks trials by their
metric at that epoch, which is only a fair ranking when every trial is at the same point of
its lr schedule there. It is not when, under ASHA with a rung below max_t:

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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.search.capacity import trials_per_gpu

if TYPE_CHECKING:  # preflight.py imports these checks and makes the Report they fill
    from carsweep.search.preflight import Report

DRY_BATCH = 4  # images per batch of the dry step: two train batches, one val batch
DRY_RESIZE = 32
OPTIMIZER_STATE = {"sgd": 1, "rmsprop": 2, "adam": 3, "adamw": 3}  # rank by state kept


def check_weights(config: SweepConfig, report: Report) -> None:
    """Every start-weights source of the space loads (safely), as the launch will load it;
    ImageNet's say the size they were trained at, a hint for `resize`."""
    from carsweep.search.tuner import shipped_weights
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


# ASHA -------------------------------------------------------------------------------------

def check_asha(config: SweepConfig, report: Report) -> None:
    if config.scheduler == "fifo":
        report.passed("asha", "scheduler fifo: no early stopping, every trial runs its epochs")
        return
    grace, rf, max_t = config.asha.grace_period, config.asha.reduction_factor, config.max_t
    if grace > max_t:
        report.failed("asha", f"`asha.grace_period` is {grace}, but must be <= max_t ({max_t})")
        return
    if not rf > 1:
        report.failed("asha", f"`asha.reduction_factor` is {rf:g}, but must be > 1")
        return
    rungs = config.asha_rungs()
    stops = len(rungs) - 1
    note = "" if stops else " (no rung below max_t: ASHA will stop no trial)"
    report.passed("asha", f"grace {grace}, reduction factor {rf:g}, max_t {max_t}: "
                  f"{stops} rung(s) where trials can stop{note}")
    report.lines.append("        epoch  trials expected to reach it")
    for epoch, trials in rungs:
        where = "  (max_t)" if epoch == max_t else ""
        report.lines.append(f"        {epoch:>5}  {trials:.1f} of {config.num_samples}{where}")


def check_schedules(config: SweepConfig, report: Report) -> None:
    """One warning per way trials can reach a rung at different points of their lr schedule
    (the rule is in the module docstring)."""
    rungs = [epoch for epoch, _ in config.asha_rungs()[:-1]]
    if config.scheduler != "asha" or not rungs:
        return
    grace = config.asha.grace_period
    epochs, warmup = _possible(config, "epochs"), _possible(config, "warmup_epochs")
    schedules = _possible(config, "lr_schedule")
    if len(epochs) > 1 and "cosine" in schedules:
        report.warned("schedules", f"`epochs` is searched ({_listed(epochs)}) with a cosine "
                      "schedule: at every rung a shorter schedule has decayed further, so ASHA "
                      f"keeps short runs; fix epochs at max_t ({config.max_t}) and let ASHA stop "
                      "trials")
    for name, what in (("warmup_epochs", "still warming up"),
                       ("freeze_backbone_epochs", "training only the head")):
        longest = max(_possible(config, name))
        if longest >= grace:
            report.warned("schedules", f"`{name}` can be {longest}, so some trials are {what} "
                          f"at the first rung (epoch {grace}); keep {name} below "
                          f"asha.grace_period ({grace}) or raise the grace period")
    if len(schedules) > 1:
        report.warned("schedules", f"`lr_schedule` is searched ({_listed(schedules)}): at a "
                      "rung the shapes have decayed by different amounts, so ASHA compares "
                      "shapes, not settings; fix lr_schedule (cosine suits fine-tuning)")
    if "step" in schedules:
        _warn_uneven_step_decays(config, report, rungs, warmup)


def _warn_uneven_step_decays(config: SweepConfig, report: Report, rungs: list[int],
                             warmup: list[int]) -> None:
    """Step decays happen at warm-up + k * step_size; the count before a rung's evaluation
    must not depend on the trial."""
    step_sizes = _possible(config, "step_size")
    for rung in rungs:
        counts = sorted({_decays_before(rung, w, s) for w in warmup for s in step_sizes})
        if len(counts) > 1:
            report.warned("schedules", f"with lr_schedule step, trials reach the rung at epoch "
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


# Dry step ---------------------------------------------------------------------------------

class _KeepMetrics:
    """A trainable Reporter that keeps what was reported and no checkpoint."""

    def __init__(self) -> None:
        self.reported: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        self.reported.append(dict(metrics))


def dry_trial(config: SweepConfig) -> TrialConfig:
    """A trial from the space (first choice, low end of ranges), shrunk to seconds on a CPU:
    one epoch, tiny images, no weights download, no cache, no workers."""
    values: dict[str, Any] = config.fixed()
    for param in config.parameters():  # parents first: a branch sees its parent's value
        if param.applies(values):
            values[param.field] = param.spec.values[0]
    values |= {"epochs": 1, "warmup_epochs": 0, "freeze_backbone_epochs": 0,
               "batch_size": DRY_BATCH, "resize": _dry_resize(values), "num_workers": 0,
               "device": "cpu", "data_cache": "off", "weights": "none"}
    try:
        return TrialConfig.model_validate(values)
    except ValueError as error:
        raise UserError(f"the first trial of the space is invalid: {error}") from None


def _dry_resize(values: dict[str, Any]) -> int:
    """DRY_RESIZE, or the trial's own size for a model that cannot take it (inception_v3
    needs 75 px, maxvit_t 224)."""
    from carsweep.trainable.backbones import feature_stages

    try:
        feature_stages(values.get("model", TrialConfig.model_fields["model"].default), DRY_RESIZE)
    except UserError:
        return values.get("resize", TrialConfig.model_fields["resize"].default)
    return DRY_RESIZE


def few_images(data, per_split: dict[str, int]):
    """The dataset restricted to the first images of each split (two train batches, one val)."""
    parts = [data.rows(split).head(count) for split, count in per_split.items()]
    return replace(data, manifest=pd.concat(parts, ignore_index=True))


def check_dry_step(config: SweepConfig, report: Report) -> None:
    from carsweep.data.manifest import load_dataset
    from carsweep.trainable import train

    reporter = _KeepMetrics()
    try:
        trial = dry_trial(config)
        data = few_images(load_dataset(Path(config.dataset)),
                          {"train": 2 * DRY_BATCH, "val": DRY_BATCH})
        train(trial, data, reporter=reporter)
    except UserError as error:
        report.failed("dry step", str(error))
        return
    except Exception as error:  # noqa: BLE001 - any crash of the trainable is the finding
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        report.failed("dry step", f"the trainable raised {type(error).__name__}: {first}")
        return
    reported = reporter.reported[-1] if reporter.reported else {}
    missing = [key for key in (config.metric, "epoch") if key not in reported]
    if missing:
        report.failed("dry step", f"the trainable did not report {', '.join(missing)} "
                      f"(it reported: {', '.join(sorted(reported)) or 'nothing'})")
        return
    report.passed("dry step", f"1 epoch on {len(data.manifest)} images reported "
                  f"{config.metric} = {reported[config.metric]:.3f}")


# Nodes ------------------------------------------------------------------------------------

def check_nodes(config: SweepConfig, report: Report) -> None:
    from carsweep.search.probes import probe_every_node

    nodes = probe_every_node(config.storage_path, config.dataset)
    bad = [node for node in nodes if node.problems]
    for node in bad:
        for problem in node.problems:
            report.failed("node", f"node {node.node}: {problem}")
    if not bad:
        report.passed("nodes", f"storage {config.storage_path} shared (a token round trip) "
                      f"and dataset {config.dataset} the same (manifest digest) on all "
                      f"{len(nodes)} node(s)")


def check_node_caches(config: SweepConfig, report: Report) -> None:
    """Per node and cache size: there, or missing with room to build it, or no room (a failure
    under data_cache: on, a warning under auto); the shared-storage warning. Builds nothing."""
    from carsweep.search.node_caches import node_cache_reports

    verdicts = {"ok": report.passed, "warn": report.warned, "fail": report.failed}
    for line in node_cache_reports(config):
        verdicts[line.verdict](line.check, line.text)


# GPUs -------------------------------------------------------------------------------------

def check_gpus(config: SweepConfig, report: Report) -> bool:
    """On every GPU node, what torch there can run (trainable/device.py judges it): a
    failure per node that would train on its CPU or cannot run its GPU. True when trials will
    use GPUs and every node that was checked can."""
    from carsweep.search.probes import probe_gpu_nodes
    from carsweep.trainable.device import cuda_facts_problems

    gpu = config.resources.gpu
    if gpu == 0:
        return False
    if set(config.listed_values("device")) == {"cpu"}:
        report.warned("gpu", f"device is cpu, so the {gpu:g} GPU each trial reserves goes "
                      "unused; set device: auto to train on the GPUs")
        return False
    working: dict[str, list[str]] = {}
    for probe in probe_gpu_nodes(gpu):
        label, facts = probe.node, probe.facts
        if probe.not_run:
            report.warned("gpu", f"node {label}: {probe.not_run} (busy with other work?); "
                          "not checked")
            continue
        problems = [probe.failed] if probe.failed else cuda_facts_problems(facts)
        for problem in problems:
            report.failed("gpu", f"node {label}: {problem}")
        if not problems:
            driver = ".".join(map(str, facts.driver_cuda)) if facts.driver_cuda else "?"
            what = (f"{facts.gpu_name} (sm_{facts.capability[0]}{facts.capability[1]}), torch "
                    f"{facts.torch_version}, driver for CUDA {driver}")
            working.setdefault(what, []).append(label)
    for what, labels in working.items():
        which = f"node {labels[0]}" if len(labels) == 1 else f"{len(labels)} nodes like {labels[0]}"
        report.passed("gpu", f"{which}: {what}")
    return report.ok


# GPU memory -------------------------------------------------------------------------------

def largest_trials(config: SweepConfig) -> list[dict[str, Any]]:
    """Per model of the space, its most memory-hungry trial: largest batch and input size,
    the optimizer that keeps the most state."""
    trial: dict[str, Any] = {}
    for name in ("batch_size", "resize"):
        spec = config.space.get(name)
        trial[name] = spec.largest() if spec else TrialConfig.model_fields[name].default
    trial["optimizer"] = max(_possible(config, "optimizer"), key=OPTIMIZER_STATE.__getitem__)
    return [{"model": model, **trial} for model in _possible(config, "model")]


def check_gpu_memory(config: SweepConfig, report: Report) -> None:
    """Run only where the GPU check found every GPU node usable."""
    from carsweep.data.manifest import load_dataset
    from carsweep.search.probes import GIB, NoCudaOnGpuNode, measure_gpu_step

    gpu = config.resources.gpu
    classes = load_dataset(Path(config.dataset)).num_classes
    for trial in largest_trials(config):  # one measurement (and line) per model
        try:
            measured = measure_gpu_step(gpu, trial, classes)
        except TimeoutError as error:  # a busy cluster: go on
            report.warned("gpu memory", f"{error}; not checked")
            return
        except NoCudaOnGpuNode as error:
            report.failed("gpu memory", str(error))
            return
        share = measured.total_bytes / trials_per_gpu(gpu)
        step = (f"one training step of {trial['model']} at batch_size={trial['batch_size']} x "
                f"resize={trial['resize']} ({trial['optimizer']}) needs "
                f"{measured.peak_bytes / GIB:.2f} GiB (tensors, allocator reserve and CUDA "
                f"context) on node {measured.node} "
                f"({measured.gpu_name}, {measured.total_bytes / GIB:.0f} GiB)")
        if measured.peak_bytes > share:
            report.failed("gpu memory", f"{step}, more than the {share / GIB:.2f} GiB each of "
                          f"{trials_per_gpu(gpu)} trials per GPU gets with resources.gpu = "
                          f"{gpu:g}; raise resources.gpu or lower batch_size / resize")
        else:
            report.passed("gpu memory", f"{step}; each of {trials_per_gpu(gpu)} trials per "
                          f"GPU gets {share / GIB:.2f} GiB")
