"""One training run of a torchvision backbone: model, augmentations, epoch loop, checkpoints.

Imports and runs with torch and torchvision alone (never ray): `carsweep train` calls
`train` with a run-folder reporter, and a Ray Tune trial calls it with a Tune reporter.
"""

from carsweep.trainable.augment import (
    AUGMENTATIONS,
    check_augmentation,
    eval_transform,
    normalization,
    train_transform,
)
from carsweep.trainable.checkpoint import load_checkpoint
from carsweep.trainable.data import build_loader
from carsweep.trainable.device import resolve_device
from carsweep.trainable.model import build_model, check_backbone, load_weights
from carsweep.trainable.optim import OPTIMIZERS, SCHEDULES, lr_factor
from carsweep.trainable.run import Reporter, TrainResult, predict, train

__all__ = [
    "AUGMENTATIONS", "OPTIMIZERS", "SCHEDULES", "Reporter", "TrainResult", "build_loader",
    "build_model", "check_augmentation", "check_backbone", "eval_transform", "load_checkpoint",
    "load_weights", "lr_factor", "normalization", "resolve_device", "predict", "train",
    "train_transform",
]
