"""Optimizers and learning-rate schedules, one registry each, keyed by TrialConfig's names.

The schedule is a factor of the peak lr as a function of training progress in epochs (a
float), stepped once per optimizer step: a linear warm-up from lr/10 to lr over
`warmup_epochs`, then the schedule's own shape over the remaining epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from carsweep.config.trial import TrialConfig

OptimizerBuilder = Callable[[Iterable[torch.nn.Parameter], TrialConfig], torch.optim.Optimizer]
# factor(t, config): t = epochs since warm-up ended (float), returns a multiple of the peak lr.
Shape = Callable[[float, TrialConfig], float]

WARMUP_START = 0.1

OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "sgd": lambda params, c: torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
        weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "rmsprop": lambda params, c: torch.optim.RMSprop(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}


def _cosine(t: float, config: TrialConfig) -> float:
    length = config.epochs - config.warmup_epochs
    return 0.5 * (1.0 + math.cos(math.pi * min(t / length, 1.0)))


def _step(t: float, config: TrialConfig) -> float:
    return config.step_gamma ** math.floor(t / config.step_size + 1e-9)


SCHEDULES: dict[str, Shape] = {
    "cosine": _cosine,          # half a cosine from lr down to 0 at the last step
    "step": _step,              # times step_gamma every step_size epochs
    "constant": lambda t, config: 1.0,
}


def lr_factor(epoch_progress: float, config: TrialConfig) -> float:
    """The multiple of `config.lr` at `epoch_progress` epochs into training (warm-up included)."""
    warmup = config.warmup_epochs
    if epoch_progress < warmup:
        return WARMUP_START + (1.0 - WARMUP_START) * epoch_progress / warmup
    return SCHEDULES[config.lr_schedule](epoch_progress - warmup, config)


def build_optimizer(model: torch.nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[config.optimizer](model.parameters(), config)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrialConfig,
                    steps_per_epoch: int) -> LambdaLR:
    """Stepped once per optimizer step. The lambda is a closure, so the scheduler's state_dict
    holds only numbers (LambdaLR saves no state for functions): safe for weights_only loads."""
    steps = max(1, steps_per_epoch)
    return LambdaLR(optimizer, lambda step: lr_factor(step / steps, config))
