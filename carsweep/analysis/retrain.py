"""Retrain configurations on train+val from their starting weights, test each once.

The trial's own checkpoint is not reused: it was picked by its validation score, and the
model that is scored on test must be trained without the test split having had any say
(nor the choice of epoch). With several seeds the spread shows how much of a score is luck;
the next-best trials' retrains make an ensemble.

Where the retrains run is the caller's choice, a `Retrain` strategy that trains a list of
`RetrainJob`s: `retrain_locally` (this process, one after another) is the default;
carsweep.search.cluster_retrain runs them as Ray tasks on a cluster's GPUs, all submitted at
once. Both train with `train_and_test`, so a job gives the same model wherever it ran, and
each `Retrained` says where that was (`Placement`). A job with `tta` also predicts the test
images flipped left-right and keeps the mean of the two softmaxes (horizontal-flip test-time
augmentation).
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
from carsweep.trainable.checkpoint import NO_CHECKPOINTS
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
    gpus: float | None = None  # the GPUs Ray gave the retrain task (on a cluster)

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


@dataclass(frozen=True)
class RetrainJob:
    """One model to retrain and test: its config (seed included), how progress lines and
    errors name it, and whether its test pass adds the flipped images."""

    config: TrialConfig
    name: str  # "retrain 2/3 (seed 1)", "retrain 3/3 (trial 7f3a, seed 0)"
    tta: bool = False


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
    tta_probs: np.ndarray | None = None  # (N, C) mean softmax of image and mirror image


@dataclass
class Tested:
    """What `train_and_test` produces, wherever it ran."""

    model: nn.Module  # eval mode, on the training device
    history: list[dict[str, float]]
    probs: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    tta_probs: np.ndarray | None = None  # (N, C), with tta only


class Retrain(Protocol):
    """A retraining strategy: every job trained and tested; results in the jobs' order."""

    def __call__(self, jobs: list[RetrainJob], dataset: PreparedDataset,
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


def retrain_name(config: TrialConfig, index: int, total: int, trial_id: str | None = None
                 ) -> str:
    """`retrain 2/3 (seed 1)`, `retrain 3/3 (trial 7f3a, seed 0)`: how progress lines and
    errors name job `index` of `total`."""
    trial = f"trial {trial_id}, " if trial_id is not None else ""
    return f"retrain {index + 1}/{total} ({trial}seed {config.seed})"


def train_and_test(config: TrialConfig, dataset: PreparedDataset, emit: Callable[[str], None],
                   initial_weights: dict | None = None, *, tta: bool = False,
                   gpu_share: float | None = None) -> Tested:
    """Train `config` on train+val (no per-epoch evaluation), then predict the test split once
    (with `tta`, once more flipped left-right); one line per epoch and one before the test
    pass go to `emit`. `gpu_share`: the GPU Ray granted (None when not placed by Ray)."""
    result = train(config, dataset, reporter=ProgressLines(emit, config.epochs),
                   train_splits=TRAIN_SPLITS, eval_split=None, initial_weights=initial_weights,
                   checkpoints=NO_CHECKPOINTS, gpu_share=gpu_share)
    mirrored = " and their mirror images" if tta else ""
    emit(f"predicting {len(dataset.rows(TEST_SPLIT))} test images{mirrored}")
    logits, labels = predict(result.model, dataset, TEST_SPLIT, config)
    probs = softmax(logits)
    tta_probs = None
    if tta:
        flipped, _ = predict(result.model, dataset, TEST_SPLIT, config, flip=True)
        tta_probs = (probs + softmax(flipped)) / 2
    return Tested(model=result.model, history=result.history, probs=probs,
                  labels=labels.numpy(), tta_probs=tta_probs)


def softmax(logits: torch.Tensor) -> np.ndarray:
    """(N, C) float64 probabilities of (N, C) logits."""
    return torch.softmax(logits.double(), dim=1).numpy()


def retrain_locally(jobs: list[RetrainJob], dataset: PreparedDataset,
                    out: TextIO | None = None) -> list[Retrained]:
    """The default strategy: every job in this process, one after another."""
    return [retrain_and_test(job, dataset, out=out) for job in jobs]


def retrain_and_test(job: RetrainJob, dataset: PreparedDataset, *,
                     out: TextIO | None = None) -> Retrained:
    """Retrain `job` here, its progress printed to `out`."""
    prefix = f"[analyze] {job.name}"
    tested = train_and_test(job.config, dataset, lambda line: say(f"{prefix} {line}", out),
                            tta=job.tta)
    return Retrained(config=job.config, model=tested.model, history=tested.history,
                     probs=tested.probs, labels=tested.labels, placement=local_placement(),
                     tta_probs=tested.tta_probs)


def seed_summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max of each metric over the retrains."""
    summary = {}
    for key in ("top1", "top5", "mean_per_class_accuracy", "ece"):
        values = np.array([m[key] for m in per_seed], dtype=float)
        summary[key] = {"mean": float(values.mean()),
                        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                        "min": float(values.min()), "max": float(values.max())}
    return summary
