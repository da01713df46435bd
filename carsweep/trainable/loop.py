"""One epoch of training, one pass of evaluation, and prediction: each returns what it measured.

Mixed precision is bf16 autocast on GPU (no loss scaling needed) and plain fp32 on the CPU.
Sums are kept on the device and read once per pass, so the GPU never waits for a `.item()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from carsweep.errors import UserError
from carsweep.trainable.data import Loader


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on the CPU (fp32 is faster there and exact)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


# Batches between looks for a NaN/inf loss on a GPU (each look waits for the GPU); on the
# CPU every batch is checked, which costs nothing.
CHECK_FINITE_EVERY = 20


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite: more epochs cannot bring it back.

    `epoch` is the epoch it happened in (None where the caller did not say), so a sweep can
    record where its trial diverged."""

    def __init__(self, message: str, epoch: int | None = None):
        super().__init__(message)
        self.epoch = epoch


def train_one_epoch(model: nn.Module, loader: Loader, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                    device: torch.device, batch_hook: Callable | None = None,
                    epoch: int | None = None) -> dict[str, float]:
    """One pass over `loader` with an optimizer and scheduler step per batch; `epoch` (which
    one this is) goes into the NonFiniteLossError that stops it.

    `batch_hook(model, x, labels_on_cpu) -> x` changes each batch's model input with the
    current model before the forward pass that trains (model-dependent augmentation:
    cam_occlusion.py)."""
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = batches = 0
    last_lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    for images, labels in loader:
        cpu_labels = labels  # a batch hook reads class indices here without a device sync
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        x = loader.to_model_input(images)  # (B, 3, S, S) float
        if batch_hook is not None:
            x = batch_hook(model, x, cpu_labels)
        with autocast(device):
            logits = model(x)  # (B, C)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        last_lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        loss_sum += loss.detach().double() * labels.numel()
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += labels.numel()
        batches += 1
        if device.type != "cuda" or batches % CHECK_FINITE_EVERY == 0:
            _stop_if_not_finite(loss_sum, batches, last_lr, epoch)
    _stop_if_not_finite(loss_sum, batches, last_lr, epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "train_loss": loss_sum.item() / max(seen, 1),
        "train_acc": correct.item() / max(seen, 1),
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "lr": float(last_lr),
    }


def _stop_if_not_finite(loss_sum: torch.Tensor, batches: int, lr: float,
                        epoch: int | None) -> None:
    """End the run at the first NaN/inf loss instead of spending the rest of its epochs."""
    if not torch.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"training loss became {loss_sum.item()} by batch {batches} of the epoch (lr {lr:g});"
            " the run stopped: lower the learning rate, or check the start weights and data",
            epoch,
        )


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, device: torch.device) -> dict[str, float]:
    """Plain cross-entropy (no label smoothing, so trials compare), top-1 and top-5 accuracy
    (fractions) over `loader`; below 5 classes top-5 is top-C."""
    logits, labels = predict_logits(model, loader, device)
    topk = min(5, logits.shape[1])
    best = logits.topk(topk, dim=1).indices  # (N, k)
    return {
        "val_loss": F.cross_entropy(logits, labels).item(),
        "val_top1": (best[:, 0] == labels).float().mean().item(),
        "val_top5": (best == labels[:, None]).any(dim=1).float().mean().item(),
    }


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Loader,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) float32 on the CPU, labels (N,)) in the loader's order, model in eval."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for images, labels in loader:
            x = loader.to_model_input(images.to(device, non_blocking=True))
            with autocast(device):
                all_logits.append(model(x).float())
            all_labels.append(labels)
    finally:
        model.train(was_training)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels)
