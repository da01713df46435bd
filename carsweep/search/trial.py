"""The function trainable Ray runs for each trial: carsweep.trainable.train, reporting to Tune.

Every epoch's metrics and checkpoint go to `ray.tune.report`; on a restart (a retry after a
failure, or a resumed sweep) `ray.tune.get_checkpoint()` hands back the last one and training
continues from it. The dataset is read from its path on the trial's node, so it must sit on
storage every node sees, or in a bucket (its images then read from the node's mirror,
carsweep/data/mirror.py); a node that cannot read it fails the trial with a message saying so.

A trial whose training loss becomes NaN/inf ends with one last report instead of an exception:
Ray would retry an exception `max_failures` times (the same settings diverge again) and print
each traceback. The report (`diverged_result`) holds the epoch it diverged in, the sweep's
metric at its worst (0.0 for mode max, +inf for min), `diverged` and the one-line message; the
trial ends TERMINATED, so it is never retried nor rerun on resume, and the searcher tells
Optuna (search/searcher.py).
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from carsweep.config.files import RESULT_FILE
from carsweep.config.space import field_values
from carsweep.config.sweep import DIVERGED, DIVERGED_MESSAGE
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import MANIFEST_FILE
from carsweep.errors import UserError
from carsweep.search.release import gpu_memory_released
from carsweep.storage import BucketPath, is_bucket, location, place_in

if TYPE_CHECKING:  # torch is imported in the trial's process only
    from carsweep.trainable.checkpoint import CheckpointPolicy

logger = logging.getLogger(__name__)


class TuneReporter:
    """carsweep.trainable's Reporter: hands each epoch's metrics and checkpoint to Ray Tune."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Ray's node_ip is the same for every node of a one-machine cluster; the id is not.
        node = {"node_id": ray.get_runtime_context().get_node_id()}
        tune.report({**metrics, **node}, checkpoint=checkpoint)


class DatasetUnreachableError(RuntimeError):
    """The trial's node cannot read the dataset folder (it is not on shared storage)."""


def run_trial(params: dict[str, Any], *, dataset: str, gpu: float, metric: str, mode: str,
              gpu_context_bytes: int | None = None,
              checkpoints: CheckpointPolicy | None = None,
              shipped_weights: dict[tuple[str, str], dict] | None = None) -> None:
    """Train one trial's configuration; Ray calls this with the searcher's parameters.

    `gpu` is the share of a GPU Ray granted the trial: it trains there or fails in one line,
    never on the CPU, and its CUDA memory is capped to that share less `gpu_context_bytes`
    (the CUDA context the pre-flight's real step measured);
    `checkpoints` says which epochs write one. `shipped_weights` maps a (model, weights) pair
    (`weights_key`) to the state dict the driver loaded, so this node needs neither internet
    (imagenet) nor the file.
    `metric` and `mode` are the sweep's: a trial that diverges reports the metric's worst value.
    """
    from carsweep.trainable import train  # torch is imported in the trial's process only
    from carsweep.trainable.loop import NonFiniteLossError

    config = trial_config(params)
    dataset_path = readable_dataset(dataset)
    weights = (shipped_weights or {}).get(weights_key(config))
    reporter = TuneReporter()
    how = {"reporter": reporter, "gpu_share": gpu, "gpu_context_bytes": gpu_context_bytes,
           **({"checkpoints": checkpoints} if checkpoints is not None else {})}
    with gpu_memory_released(), restorable_checkpoint(tune.get_checkpoint()) as folder:
        try:
            if folder is None:
                train(config, dataset_path, initial_weights=weights, **how)
            else:
                train(config, dataset_path, resume_from=folder, **how)
        except NonFiniteLossError as error:
            reporter.report(diverged_result(error.epoch, str(error), metric, mode))


def weights_key(config: TrialConfig) -> tuple[str, str]:
    """How the driver's shipped start weights are keyed: ImageNet's differ per model."""
    return config.model, config.weights


def diverged_result(epoch: int, message: str, metric: str, mode: str) -> dict[str, Any]:
    """The last report of a trial that diverged in `epoch`: its metric at the worst value."""
    worst = 0.0 if mode == "max" else float("inf")  # every reported metric is >= 0
    return {"epoch": epoch, metric: worst, DIVERGED: True, DIVERGED_MESSAGE: message}


@contextmanager
def restorable_checkpoint(checkpoint: tune.Checkpoint | None) -> Iterator[Path | None]:
    """The folder to resume from: the trial's newest usable checkpoint, or None.

    Ray hands over the latest checkpoint its saved experiment state knows. That state is
    snapshotted every few seconds, so after a killed driver it can name an older checkpoint
    than the trial folder holds. A newer one beside it is used when the epoch it holds is in
    the trial's result.json: that epoch (or a trial that had finished) is not trained again,
    and one whose result the driver never wrote is trained again, so no epoch's row is lost.
    A checkpoint that does not load (a node that died mid-write truncates it) is passed over
    for an older one; when none loads the trial starts over rather than failing every retry.

    The same for an experiment in a bucket: the trial's folder there is listed and its
    result.json read, and the checkpoints tried are downloaded one at a time, newest first,
    into a temporary folder (the one chosen is kept until the block ends); `as_directory()`
    alone would download Ray's one checkpoint, with nothing beside it to compare.
    """
    from carsweep.trainable import load_checkpoint

    if checkpoint is None:
        yield None
        return
    latest = _index(checkpoint.path)
    if latest < 0:  # a copy in a temporary folder: nothing beside it to look at
        candidates, recorded = [checkpoint], 0
    else:
        trial = _trial_folder(checkpoint)
        candidates = _newest_first(checkpoint, trial)
        recorded = _last_recorded_epoch(trial / RESULT_FILE)
    for candidate in candidates:
        with candidate.as_directory() as local:
            folder = Path(local)
            try:
                epoch = load_checkpoint(folder)["epoch"]
            except UserError as error:
                logger.warning("skipping checkpoint %s: %s", _where(candidate), error)
                continue
            if _index(candidate.path) > latest and epoch > recorded:
                continue  # its epoch's result never reached the driver: train it again
            yield folder
            return
    logger.warning("no checkpoint of this trial loads; it starts again from epoch 1")
    yield None


def _last_recorded_epoch(result_file: Path | BucketPath) -> int:
    """The last epoch in a trial's result.json (one JSON object per line), 0 if none."""
    try:
        lines = result_file.read_text().splitlines()
    except OSError:
        return 0
    epochs = []
    for line in lines:
        try:
            epochs.append(int(json.loads(line)["epoch"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the driver's death
    return max(epochs, default=0)


def _index(path: str) -> int:
    found = re.fullmatch(r"checkpoint_(\d+)", PurePosixPath(path).name)
    return int(found.group(1)) if found else -1


def _newest_first(latest: tune.Checkpoint, trial: Path | BucketPath) -> list[tune.Checkpoint]:
    """`latest` and the checkpoint_NNNNNN folders beside it in the trial's folder, newest
    first, in its filesystem: a local one, or the bucket's."""
    found = {_index(folder.name): tune.Checkpoint(_fs_path(folder), filesystem=latest.filesystem)
             for folder in trial.iterdir() if folder.is_dir() and _index(folder.name) >= 0}
    found[_index(latest.path)] = latest
    return [found[index] for index in sorted(found, reverse=True)]


def _trial_folder(checkpoint: tune.Checkpoint) -> Path | BucketPath:
    """The folder the checkpoint sits in: local, or in its bucket (listed once, whole)."""
    folder = place_in(checkpoint.filesystem, checkpoint.path).parent
    return folder.listed() if is_bucket(folder) else folder


def _fs_path(folder: Path | BucketPath) -> str:
    return folder.fs_path if is_bucket(folder) else str(folder)


def _where(checkpoint: tune.Checkpoint) -> str:
    """A checkpoint's place for a person: its folder, or its bucket URI."""
    return str(place_in(checkpoint.filesystem, checkpoint.path))


def trial_config(params: dict[str, Any]) -> TrialConfig:
    """The TrialConfig of a trial (its device is resolved where it trains, with the GPU share
    Ray granted: trainable/device.py). A branch's study name (`lr|sgd`, from a searcher that
    did not map it back) is its field."""
    values = field_values(params)
    try:
        return TrialConfig.model_validate(values)
    except ValueError as error:
        # Cross-field rules (warm-up < epochs) can only fail on a sampled combination.
        raise UserError(f"trial config {values} is invalid: {error}") from None


def readable_dataset(dataset: str) -> Path | str:
    """The dataset folder if this node can read its manifest, else a clear error; a dataset
    in a bucket as it is (its loading names what the store refuses)."""
    if is_bucket(location(dataset)):
        return dataset
    folder = Path(dataset)
    manifest = folder / MANIFEST_FILE
    try:
        with manifest.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise DatasetUnreachableError(
            f"node {socket.gethostname()} cannot read the dataset {folder} ({error.strerror}); "
            "put it on a path every Ray node sees (shared file system) with the same name"
        ) from None
    return folder
