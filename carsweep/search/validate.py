"""Checks that run before Ray starts: a sweep that cannot work stops here, in one line."""

from __future__ import annotations

from pathlib import Path

from carsweep.config.sweep import SweepConfig, sweep_problems
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError


def check_sweep(config: SweepConfig) -> None:
    """Schema-level problems, then every augmentation name a trial could get, then the data."""
    problems = sweep_problems(config)
    if problems:
        raise UserError(problems[0])
    check_augmentations(config)
    check_dataset(config.dataset)


def check_augmentations(config: SweepConfig) -> None:
    """Each augmentation value (fixed or choice) must name presets the trainable knows."""
    spec = config.space.get("augmentation")
    if spec is None:
        return
    from carsweep.trainable import check_augmentation

    for name in spec.values:
        try:
            check_augmentation(name)
        except UserError as error:
            raise UserError(f"space: {error}") from None


def check_dataset(dataset: str | None) -> None:
    """The driver must at least see a prepared dataset; trials re-check on their own node."""
    if dataset is None:
        raise UserError("no dataset: give --data DATASET or `dataset:` in the sweep config")
    load_dataset(Path(dataset))  # a UserError naming the folder if it is not a prepared one
