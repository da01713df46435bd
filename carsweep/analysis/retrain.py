"""Retrain the best configuration on train+val from its starting weights, test it once.

The trial's own checkpoint is not reused: it was picked by its validation score, and the
model that is scored on test must be trained without the test split having had any say
(nor the choice of epoch). With several seeds the spread shows how much of a score is luck.

Where the retrains run is the caller's choice, a `Retrain` strategy: `retrain_locally` (this
process, one seed after another) is the default; carsweep.search.cluster_retrain runs them as
Ray tasks on a cluster's GPUs. Both train with `train_and_test`, so a seed gives the same
model wherever it ran, and each `Retrained` says where that was (`Placement`).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

import numpy as np
import torch
from torch import nn

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import PreparedDataset
from carsweep.trainable import predict, train
from carsweep.trainable.run_folder import progress_line

TRAIN_SPLITS = ("train", "val")
TEST_SPLIT = "test"


@dataclass(frozen=True)
class Placement:
    """Where one retrain ran: on a node of a Ray cluster, or locally (the analyze process)."""

    ran_on: Literal["cluster", "local"]
    hostname: str
    node: str | None = None  # the node's label as the pre-flight names it: address/short id
    node_id: str | None = None  # Ray's full node id

    def describe(self) -> str:
        if self.node is None:
            return f"host {self.hostname} (in the analyze process)"
        return f"node {self.node} ({self.hostname})"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


def local_placement() -> Placement:
    return Placement(ran_on="local", hostname=socket.gethostname())


@dataclass
class Retrained:
    """One retrain: its config (seed included), model, per-epoch history, test outputs, and
    where it ran."""

    config: TrialConfig
    model: nn.Module
    history: list[dict[str, float]]
    probs: np.ndarray  # (N, C) softmax of the test logits, manifest order
    labels: np.ndarray  # (N,)
    placement: Placement


@dataclass
class Tested:
    """What `train_and_test` produces, wherever it ran."""

    model: nn.Module  # eval mode, on the training device
    history: list[dict[str, float]]
    probs: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)


class Retrain(Protocol):
    """A retraining strategy: `seeds` retrains of `config` (seeds seed .. seed+seeds-1)."""

    def __call__(self, config: TrialConfig, dataset: PreparedDataset, seeds: int,
                 out: TextIO | None = None) -> list[Retrained]: ...


class ProgressLines:
    """A Reporter that turns each epoch's metrics into one progress line, handed to `emit`."""

    def __init__(self, emit: Callable[[str], None], epochs: int) -> None:
        self.emit, self.epochs = emit, epochs

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.emit(progress_line(metrics, self.epochs))


def say(line: str, out: TextIO | None = None) -> None:
    """One progress line, to `out` or to the sys.stdout of the moment (not the one at import)."""
    print(line, file=out or sys.stdout, flush=True)


def seeded(config: TrialConfig, seed_index: int) -> TrialConfig:
    """The config of retrain `seed_index`: the trial's seed + seed_index."""
    return config.model_copy(update={"seed": config.seed + seed_index})


def retrain_name(config: TrialConfig, seed_index: int, seeds: int) -> str:
    """`retrain 2/3 (seed 1)`: how progress lines and errors name one retrain."""
    return f"retrain {seed_index + 1}/{seeds} (seed {config.seed})"


def train_and_test(config: TrialConfig, dataset: PreparedDataset, emit: Callable[[str], None],
                   initial_weights: dict | None = None) -> Tested:
    """Train `config` on train+val (no per-epoch evaluation), then predict the test split once;
    one line per epoch and one before the test pass go to `emit`."""
    result = train(config, dataset, reporter=ProgressLines(emit, config.epochs),
                   train_splits=TRAIN_SPLITS, eval_split=None, initial_weights=initial_weights)
    emit(f"predicting {len(dataset.rows(TEST_SPLIT))} test images")
    logits, labels = predict(result.model, dataset, TEST_SPLIT, config)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    return Tested(model=result.model, history=result.history, probs=probs,
                  labels=labels.numpy())


def retrain_locally(config: TrialConfig, dataset: PreparedDataset, seeds: int,
                    out: TextIO | None = None) -> list[Retrained]:
    """The default strategy: every retrain in this process, one after another."""
    return [retrain_and_test(config, dataset, seed_index=k, seeds=seeds, out=out)
            for k in range(seeds)]


def retrain_and_test(config: TrialConfig, dataset: PreparedDataset, *, seed_index: int = 0,
                     seeds: int = 1, out: TextIO | None = None) -> Retrained:
    """Retrain `seed_index` of `seeds` here, its progress printed to `out`."""
    config = seeded(config, seed_index)
    prefix = f"[analyze] {retrain_name(config, seed_index, seeds)}"
    tested = train_and_test(config, dataset, lambda line: say(f"{prefix} {line}", out))
    return Retrained(config=config, model=tested.model, history=tested.history,
                     probs=tested.probs, labels=tested.labels, placement=local_placement())


def seed_summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max of each metric over the retrains."""
    summary = {}
    for key in ("top1", "top5", "mean_per_class_accuracy"):
        values = np.array([m[key] for m in per_seed], dtype=float)
        summary[key] = {"mean": float(values.mean()),
                        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                        "min": float(values.min()), "max": float(values.max())}
    return summary
