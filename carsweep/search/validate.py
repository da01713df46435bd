"""Checks that run before Ray starts: a sweep that cannot work stops here, in one line."""

from __future__ import annotations

import tempfile
from itertools import product
from pathlib import Path

from carsweep.config.sweep import SweepConfig, sweep_problems
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError


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
    """The driver must at least see a prepared dataset; trials re-check on their own node."""
    if dataset is None:
        raise UserError("no dataset: give --data DATASET or `dataset:` in the sweep config")
    load_dataset(Path(dataset))  # a UserError naming the folder if it is not a prepared one


def check_storage_writable(storage: Path) -> None:
    """The storage folder (or the nearest folder above it that exists) must take a new file."""
    problem = storage_problem(str(storage))
    if problem:
        raise UserError(f"{problem}; give --storage a folder you can write to")


def storage_problem(storage: str) -> str | None:
    """None if a file can be created where the experiment will go; the probe file is removed,
    and folders that do not exist yet are not created (the check writes nothing). Run on the
    driver before Ray starts, and on every node by the pre-flight probes."""
    target = Path(storage)
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"storage path {storage} is not writable ({existing} is not a folder)"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".carsweep-probe-"):
            pass
    except OSError as error:
        return f"storage path {storage} is not writable ({error.strerror} in {existing})"
    return None
