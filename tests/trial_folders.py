"""A trial's folder as Ray Tune lays it out, written by the real trainable: the checkpoints
`restorable_checkpoint` chooses from (tests/test_storage_integrity.py in a folder,
tests/test_bucket_recovery.py in a bucket). No Ray runtime is needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from carsweep.config.trial import TrialConfig

EPOCHS = 3


class RayLikeTrialFolder:
    """Keeps each epoch as Ray Tune does: trial/checkpoint_000000, _000001, ... and a line of
    result.json per epoch."""

    def __init__(self, folder: Path):
        self.folder, self.epochs = folder, []

    def report(self, metrics, checkpoint_dir):
        self.epochs.append(metrics["epoch"])
        shutil.copytree(checkpoint_dir, self.checkpoint(metrics["epoch"]))
        with (self.folder / "result.json").open("a") as results:
            results.write(json.dumps(metrics) + "\n")

    def checkpoint(self, epoch: int) -> Path:
        return self.folder / checkpoint_name(epoch)


def checkpoint_name(epoch: int) -> str:
    """Ray's name of the checkpoint a trial reported with `epoch` (one checkpoint an epoch)."""
    return f"checkpoint_{epoch - 1:06d}"


def trial_config(epochs: int = EPOCHS, model: str = "resnet18") -> TrialConfig:
    return TrialConfig(model=model, epochs=epochs, batch_size=4, resize=32, num_workers=0,
                       device="cpu", optimizer="sgd", lr=0.02, augmentation="flip",
                       data_cache="off", weights="none", seed=3)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # what a node dying mid-write leaves
