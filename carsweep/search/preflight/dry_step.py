"""The dry step: carsweep.trainable.train for one epoch on a few of the dataset's images at a
small size, on the driver's CPU; it must report the sweep's metric and ASHA's time attribute."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.results.console import metric_text

if TYPE_CHECKING:
    from carsweep.search.preflight.report import Report

DRY_BATCH = 4  # images per batch of the dry step: two train batches, one val batch
DRY_RESIZE = 32


class _KeepMetrics:
    """A trainable Reporter that keeps what was reported and no checkpoint."""

    def __init__(self) -> None:
        self.reported: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        self.reported.append(dict(metrics))


def dry_trial(config: SweepConfig) -> TrialConfig:
    """A trial from the space (first choice, low end of ranges), shrunk to seconds on a CPU:
    one epoch, tiny images, no weights download, no cache, no workers."""
    values = first_trial_values(config)
    values |= {"epochs": 1, "warmup_epochs": 0, "freeze_backbone_epochs": 0,
               "batch_size": DRY_BATCH, "resize": _dry_resize(values), "num_workers": 0,
               "device": "cpu", "data_cache": "off", "weights": "none"}
    try:
        return TrialConfig.model_validate(values)
    except ValueError as error:
        raise UserError(f"the first trial of the space is invalid: {error}") from None


def first_trial_values(config: SweepConfig, chosen: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """The fields of the space's first trial (fixed values, first choices, low range ends),
    with the fields `chosen` set first, so the branches they select are the ones taken."""
    values: dict[str, Any] = config.fixed() | (chosen or {})
    for param in config.parameters():  # parents first: a branch sees its parent's value
        if param.field not in (chosen or {}) and param.applies(values):
            values[param.field] = param.spec.values[0]
    return values


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
        data = few_images(load_dataset(config.dataset),
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
                  f"{config.metric} = {metric_text(config.metric, reported[config.metric])}")


