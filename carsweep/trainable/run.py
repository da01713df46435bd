"""`train(config, dataset, reporter=...)`: one training run, the function a sweep calls per trial.

Per epoch: train, evaluate on `eval_split`, and hand the metrics to
`reporter.report(metrics, checkpoint_dir)`; on the epochs the CheckpointPolicy asks for
(every epoch unless told otherwise; a sweep asks for ASHA's rungs, the last epoch and at most
one every few minutes) `checkpoint_dir` is a fresh temporary folder holding the checkpoint,
else None. The reporter must keep what it wants of that folder during the call (Ray Tune
copies it to the trial's storage; the standalone run folder copies it to checkpoints/last):
it is deleted when `report` returns. The metrics include `precision`, the autocast the run
computes in (loop.py), which the checkpoint stores too.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import SPLITS, PreparedDataset, load_dataset
from carsweep.errors import UserError
from carsweep.trainable.augment import check_augmentation
from carsweep.trainable.cam_occlusion import batch_hook_for
from carsweep.trainable.checkpoint import (
    CheckpointPolicy,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from carsweep.trainable.data import Loader, build_loader
from carsweep.trainable.device import run_device
from carsweep.trainable.loop import (
    evaluate,
    grad_scaler,
    pick_precision,
    predict_logits,
    train_one_epoch,
)
from carsweep.trainable.mixing import batch_mix_for
from carsweep.trainable.model import build_model, check_backbone, set_backbone_frozen
from carsweep.trainable.optim import build_optimizer, build_scheduler

EVERY_EPOCH = CheckpointPolicy()


class Reporter(Protocol):
    """Receives each epoch's metrics and checkpoint folder (Ray Tune, a run folder, a test)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


@dataclass
class TrainResult:
    """The trained model (eval mode, on the training device), every epoch's metrics, the classes."""

    model: nn.Module
    history: list[dict[str, float]]
    classes: list[str]


def train(config: TrialConfig, dataset: PreparedDataset | Path, *, reporter: Reporter,
          train_splits: tuple[str, ...] = ("train",), eval_split: str | None = "val",
          resume_from: Path | None = None, initial_weights: dict | None = None,
          checkpoints: CheckpointPolicy = EVERY_EPOCH,
          gpu_share: float | None = None, gpu_context_bytes: int | None = None) -> TrainResult:
    """Train `config.model` on `train_splits` for `config.epochs` epochs, reporting every epoch
    (with a checkpoint on the epochs `checkpoints` asks for). `gpu_share` is the GPU Ray
    granted this process (None: not placed by Ray; device.py says what each value means):
    a granted GPU is used or the run fails, and below 1 this process's CUDA memory is capped
    to that share less `gpu_context_bytes` (the CUDA context the pre-flight measured)."""
    check_augmentation(config.augmentation, resize=config.resize)
    check_backbone(config.model, resize=config.resize, augmentation=config.augmentation)
    check_splits(*train_splits, *([eval_split] if eval_split else []))
    data = dataset if isinstance(dataset, PreparedDataset) else load_dataset(dataset)
    device = run_device(config.device, gpu_share, gpu_context_bytes)
    precision = pick_precision(config.precision, device)
    with deterministic_mode(config.deterministic, device):
        torch.manual_seed(config.seed)
        train_loader = build_loader(data, tuple(train_splits), config, train=True, device=device)
        eval_loader = (build_loader(data, eval_split, config, train=False, device=device)
                       if eval_split else None)
        resumed = load_checkpoint(resume_from) if resume_from is not None else None
        weights = None if resumed else (initial_weights if initial_weights is not None
                                        else config.weights)
        run = build_run(config, data.num_classes, weights, device, precision, len(train_loader))
        history: list[dict[str, float]] = []
        first_epoch = 1
        if resumed is not None:
            _check_same_classes(resumed, data, resume_from)
            run.restore(resumed)
            restore_rng_states(resumed["rng"], train_loader.generator, device)
            history = list(resumed["history"])
            first_epoch = int(resumed["epoch"]) + 1
        last_saved = time.monotonic()
        for epoch in range(first_epoch, config.epochs + 1):
            started = time.perf_counter()
            metrics = {"epoch": epoch} | run_epoch(run, config, epoch, train_loader, eval_loader)
            metrics["epoch_time_s"] = time.perf_counter() - started
            metrics["precision"] = precision
            history.append(metrics)
            if not checkpoints.due(epoch, config.epochs, time.monotonic() - last_saved):
                reporter.report(dict(metrics), None)
                continue
            state = run.state() | {
                "epoch": epoch, "history": history, "classes": data.classes,
                "rng": rng_states(train_loader.generator, device), "precision": precision,
            }
            with staging_folder() as folder:
                save_checkpoint(folder, state, config, data.classes)
                reporter.report(dict(metrics), folder)
            last_saved = time.monotonic()
        set_backbone_frozen(run.model, False, config.model)
        run.model.eval()
    return TrainResult(model=run.model, history=history, classes=list(data.classes))


@dataclass
class Run:
    """What one training run steps: the model on its device and what trains it."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    batch_mix: Callable | None
    device: torch.device
    precision: str

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state["scaler"]:
            # A run resumed on another GPU generation may switch bf16 <-> fp16: the fp32
            # weights carry over, a scale exists only where both sides used one.
            self.scaler.load_state_dict(state["scaler"])


def build_run(config: TrialConfig, num_classes: int, weights, device: torch.device,
              precision: str, steps_per_epoch: int) -> Run:
    """The model (channels_last on a GPU), loss, optimizer, schedule, fp16 scaler and batch
    mix of `config`, as every run and the pre-flight's real step build them."""
    model = build_model(num_classes, weights, config.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    return Run(model=model,
               criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
               optimizer=optimizer,
               scheduler=build_scheduler(optimizer, config, steps_per_epoch),
               scaler=grad_scaler(precision, device),
               batch_mix=batch_mix_for(config, num_classes, precision),
               device=device, precision=precision)


def run_epoch(run: Run, config: TrialConfig, epoch: int, train_loader: Loader,
              eval_loader: Loader | None) -> dict[str, float]:
    """Epoch `epoch` of a run: train (backbone frozen in the first freeze_backbone_epochs,
    the epoch's batch hook), then evaluate; its metrics."""
    run.model.train()
    set_backbone_frozen(run.model, epoch <= config.freeze_backbone_epochs, config.model)
    metrics = train_one_epoch(run.model, train_loader, run.criterion, run.optimizer,
                              run.scheduler, run.scaler, run.device,
                              batch_hook=batch_hook_for(config, epoch),
                              precision=run.precision, epoch=epoch, batch_mix=run.batch_mix)
    if eval_loader is not None:
        metrics |= evaluate(run.model, eval_loader, run.device, run.precision)
    return metrics


def predict(model: nn.Module, dataset: PreparedDataset | Path, split: str, config: TrialConfig,
            batch_size: int | None = None, *, flip: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) float32 on the CPU, labels (N,)) for `split`, in manifest order, with the
    evaluation preprocessing (no augmentation; `flip` mirrors every image left-right), on the
    device the model is on."""
    check_splits(split)
    data = dataset if isinstance(dataset, PreparedDataset) else load_dataset(dataset)
    device = next(model.parameters()).device
    loader = build_loader(data, split, config, train=False, batch_size=batch_size, device=device)
    return predict_logits(model, loader, device, config.precision, flip=flip)


def check_splits(*splits: str) -> None:
    """A UserError naming a split that is not one of the manifest's splits."""
    for split in splits:
        if split not in SPLITS:
            raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)}")


@contextmanager
def deterministic_mode(on: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms while a run lasts (when asked); cuDNN autotuning otherwise."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


CHECKPOINT_STAGING_PREFIX = "carsweep-checkpoint-"
# A staging folder lives for the seconds Ray takes to copy it to storage: one this old whose
# process is gone was left by a kill, never by a trial still writing (even one whose pid is
# in another pid namespace sharing this /tmp).
ORPHAN_AGE_S = 600


@contextmanager
def staging_folder() -> Iterator[Path]:
    """A staging folder for one checkpoint, named after this process, removed when done."""
    _remove_orphans_once()
    folder = Path(tempfile.mkdtemp(prefix=f"{CHECKPOINT_STAGING_PREFIX}{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphaned_staging_folders(root: Path) -> list[Path]:
    """Remove the checkpoint staging folders under `root` whose process has exited and that are
    older than ORPHAN_AGE_S: a trial killed (SIGKILL, the OOM killer, its driver killed)
    never runs its `finally`, and each such folder holds a whole checkpoint (up to ~135 MB
    at 196 classes) on the node's disk. Returns what was removed."""
    now = time.time()
    removed = []
    for folder in root.glob(f"{CHECKPOINT_STAGING_PREFIX}*-*"):
        pid = folder.name.removeprefix(CHECKPOINT_STAGING_PREFIX).split("-", 1)[0]
        try:
            old = now - folder.stat().st_mtime > ORPHAN_AGE_S
        except OSError:
            continue  # removed meanwhile
        if pid.isdigit() and old and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@functools.cache
def _remove_orphans_once() -> None:
    remove_orphaned_staging_folders(Path(tempfile.gettempdir()))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _check_same_classes(state: dict, data: PreparedDataset, folder: Path) -> None:
    if list(state.get("classes", data.classes)) != list(data.classes):
        raise UserError(
            f"{folder}: checkpoint was trained on other classes than {data.folder} "
            f"({len(state['classes'])} vs {len(data.classes)}); resume on the same dataset"
        )
