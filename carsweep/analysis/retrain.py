"""Retrain the best configuration on train+val from its starting weights, test it once.

The trial's own checkpoint is not reused: it was picked by its validation score, and the
model that is scored on test must be trained without the test split having had any say
(nor the choice of epoch). With several seeds the spread shows how much of a score is luck.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import nn

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import PreparedDataset
from carsweep.trainable import predict, train
from carsweep.trainable.run_folder import progress_line

TRAIN_SPLITS = ("train", "val")
TEST_SPLIT = "test"


@dataclass
class Retrained:
    """One retrain: its config (seed included), model, per-epoch history, test outputs."""

    config: TrialConfig
    model: nn.Module
    history: list[dict[str, float]]
    probs: np.ndarray  # (N, C) softmax of the test logits, manifest order
    labels: np.ndarray  # (N,)


class ProgressPrinter:
    """A Reporter that prints one line per epoch, prefixed with which retrain it is."""

    def __init__(self, prefix: str, epochs: int, out: TextIO | None = None) -> None:
        self.prefix, self.epochs, self.out = prefix, epochs, out

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        say(f"{self.prefix} {progress_line(metrics, self.epochs)}", self.out)


def say(line: str, out: TextIO | None = None) -> None:
    """One progress line, to `out` or to the sys.stdout of the moment (not the one at import)."""
    print(line, file=out or sys.stdout, flush=True)


def retrain_and_test(config: TrialConfig, dataset: PreparedDataset, *, seed_index: int = 0,
                     seeds: int = 1, out: TextIO | None = None) -> Retrained:
    """Train `config` (seed + seed_index) on train+val, no per-epoch evaluation, then predict
    the test split once."""
    config = config.model_copy(update={"seed": config.seed + seed_index})
    prefix = f"[analyze] retrain {seed_index + 1}/{seeds} (seed {config.seed})"
    result = train(config, dataset, reporter=ProgressPrinter(prefix, config.epochs, out),
                   train_splits=TRAIN_SPLITS, eval_split=None)
    say(f"[analyze] predicting {len(dataset.rows(TEST_SPLIT))} test images", out)
    logits, labels = predict(result.model, dataset, TEST_SPLIT, config)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    return Retrained(config=config, model=result.model, history=result.history,
                     probs=probs, labels=labels.numpy())


def seed_summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max of each metric over the retrains."""
    summary = {}
    for key in ("top1", "top5", "mean_per_class_accuracy"):
        values = np.array([m[key] for m in per_seed], dtype=float)
        summary[key] = {"mean": float(values.mean()),
                        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                        "min": float(values.min()), "max": float(values.max())}
    return summary
