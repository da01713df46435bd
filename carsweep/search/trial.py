"""The function trainable Ray runs for each trial: carsweep.trainable.train, reporting to Tune.

Every epoch's metrics and checkpoint go to `ray.tune.report`; on a restart (a retry after a
failure, or a resumed sweep) `ray.tune.get_checkpoint()` hands back the last one and training
continues from it. The dataset is read from its path on the trial's node, so it must sit on
storage every node sees; a node that cannot read it fails the trial with a message saying so.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from ray import tune

from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"


class TuneReporter:
    """carsweep.trainable's Reporter: hands each epoch's metrics and checkpoint to Ray Tune."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(dict(metrics), checkpoint=checkpoint)


class DatasetUnreachableError(RuntimeError):
    """The trial's node cannot read the dataset folder (it is not on shared storage)."""


def run_trial(params: dict[str, Any], *, dataset: str, use_gpu: bool,
              shipped_weights: dict[str, dict] | None = None) -> None:
    """Train one trial's configuration; Ray calls this with the searcher's parameters.

    `shipped_weights` maps a `weights` name to the state dict the driver loaded, so this
    node needs neither internet (imagenet) nor the weights file.
    """
    from carsweep.trainable import train  # torch is imported in the trial's process only

    config = trial_config(params, use_gpu=use_gpu)
    dataset_path = readable_dataset(dataset)
    weights = (shipped_weights or {}).get(config.weights)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(config, dataset_path, reporter=TuneReporter(), initial_weights=weights)
        return
    with checkpoint.as_directory() as folder:
        train(config, dataset_path, reporter=TuneReporter(), resume_from=Path(folder))


def trial_config(params: dict[str, Any], *, use_gpu: bool) -> TrialConfig:
    """The TrialConfig of a trial; `device: auto` means cpu when the trial was given no GPU."""
    values = dict(params)
    if not use_gpu and values.get("device", "auto") == "auto":
        values["device"] = "cpu"
    try:
        return TrialConfig.model_validate(values)
    except ValueError as error:
        # Cross-field rules (warm-up < epochs) can only fail on a sampled combination.
        raise UserError(f"trial config {values} is invalid: {error}") from None


def readable_dataset(dataset: str) -> Path:
    """The dataset folder if this node can read its manifest, else a clear error."""
    folder = Path(dataset)
    manifest = folder / "manifest.csv"
    try:
        with manifest.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise DatasetUnreachableError(
            f"node {socket.gethostname()} cannot read the dataset {folder} ({error.strerror}); "
            "put it on a path every Ray node sees (shared file system) with the same name"
        ) from None
    return folder
