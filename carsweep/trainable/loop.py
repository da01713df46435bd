"""One epoch of training, one pass of evaluation, and prediction: each returns what it measured.

Mixed precision follows the GPU generation: bf16 autocast where the GPU computes bf16
natively (Ampere and newer; no loss scaling needed), fp16 autocast with a GradScaler where it
does not (T4, V100, P100: bf16 there is emulated, slower than fp32), plain fp32 on the CPU
(faster there, and exact). `precision` can also be forced (fp16 works on the CPU too, which is
how the GradScaler path is tested without a GPU).
Sums are kept on the device and read once per pass, so the GPU never waits for a `.item()`.
Under a mixing augmentation (mixing.py) the loss is against soft targets and the train
accuracy against each target's dominant class; evaluation is always hard-label.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from carsweep.errors import UserError
from carsweep.trainable.data import Loader

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
NATIVE_BF16_MAJOR = 8  # compute capability 8.x (Ampere) is the first with bf16 tensor cores


def pick_precision(choice: str, device: torch.device) -> str:
    """"bf16", "fp16" or "fp32" for a run's `precision` setting on `device`."""
    if choice == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if choice == "bf16" and device.type == "cuda" and not native_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise UserError(f"`precision` = 'bf16', but {name} has no native bf16 (compute "
                        "capability below 8.0, where it is emulated and slow); use auto or fp16")
    return choice


def native_bf16(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= NATIVE_BF16_MAJOR


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of `precision` (as `pick_precision` resolves it) on `device`."""
    dtype = AUTOCAST_DTYPES[pick_precision(precision, device)]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its gradients underflow without it); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=pick_precision(precision, device) == "fp16")


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
                    precision: str = "auto", epoch: int | None = None,
                    batch_mix: Callable | None = None) -> dict[str, float]:
    """One pass over `loader` with an optimizer and scheduler step per batch; `epoch` (which
    one this is) goes into the NonFiniteLossError that stops it.

    `batch_hook(model, x, labels_on_cpu) -> x` changes each batch's model input with the
    current model before the forward pass that trains (model-dependent augmentation:
    cam_occlusion.py); then `batch_mix(model, x, labels) -> (x, targets (B, C))` mixes it
    (mixing.py): the loss is against those soft targets, `train_acc` against their largest
    class. `scaler` must match `precision` (`grad_scaler`)."""
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
        targets = labels  # (B,) class indices, or (B, C) soft targets after a mix
        if batch_mix is not None:
            x, targets = batch_mix(model, x, labels)
        with autocast(device, precision):
            logits = model(x)  # (B, C)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped by an fp16 scaler when the gradients overflowed
        scaler.update()
        last_lr = optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():
            # ...so the schedule may step before the optimizer first does: expected with fp16.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            scheduler.step()
        loss_sum += loss.detach().double() * labels.numel()
        correct += (logits.argmax(dim=1) == dominant_class(targets)).sum()
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


def dominant_class(targets: torch.Tensor) -> torch.Tensor:
    """(B,) class indices: the labels themselves, or each soft target's largest class."""
    return targets if targets.dim() == 1 else targets.argmax(dim=1)


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
def evaluate(model: nn.Module, loader: Loader, device: torch.device,
             precision: str = "auto") -> dict[str, float]:
    """Plain cross-entropy (no label smoothing, so trials compare), top-1 and top-5 accuracy
    (fractions) over `loader`; below 5 classes top-5 is top-C."""
    logits, labels = predict_logits(model, loader, device, precision)
    topk = min(5, logits.shape[1])
    best = logits.topk(topk, dim=1).indices  # (N, k)
    return {
        "val_loss": F.cross_entropy(logits, labels).item(),
        "val_top1": (best[:, 0] == labels).float().mean().item(),
        "val_top5": (best == labels[:, None]).any(dim=1).float().mean().item(),
    }


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Loader, device: torch.device,
                   precision: str = "auto", *, flip: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C) float32 on the CPU, labels (N,)) in the loader's order, model in eval;
    with `flip`, of the images mirrored left-right (test-time augmentation)."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for images, labels in loader:
            x = loader.to_model_input(images.to(device, non_blocking=True))  # (B, 3, S, S)
            if flip:  # the normalisation is per channel, so mirroring after it is exact
                x = torch.flip(x, dims=(-1,))
            with autocast(device, precision):
                all_logits.append(model(x).float())
            all_labels.append(labels)
    finally:
        model.train(was_training)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels)
