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


def _sgd(params: Iterable[torch.nn.Parameter], c: TrialConfig) -> torch.optim.Optimizer:
    """SGD with `momentum`; Nesterov momentum with `nesterov: true`"""
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                           nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay)


def _adam(params: Iterable[torch.nn.Parameter], c: TrialConfig) -> torch.optim.Optimizer:
    """Adam; `weight_decay` is added to the gradient (L2), `momentum` is ignored"""
    return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)


def _adamw(params: Iterable[torch.nn.Parameter], c: TrialConfig) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled `weight_decay`; `momentum` is ignored"""
    return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)


def _rmsprop(params: Iterable[torch.nn.Parameter], c: TrialConfig) -> torch.optim.Optimizer:
    """RMSprop with `momentum`"""
    return torch.optim.RMSprop(params, lr=c.lr, momentum=c.momentum,
                               weight_decay=c.weight_decay)


# Each entry's docstring is its one-line description (`carsweep settings` lists them).
OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop,
}


def _cosine(t: float, config: TrialConfig) -> float:
    """half a cosine from lr down to 0 at the last step"""
    length = config.epochs - config.warmup_epochs
    return 0.5 * (1.0 + math.cos(math.pi * min(t / length, 1.0)))


def _step(t: float, config: TrialConfig) -> float:
    """lr times `step_gamma` every `step_size` epochs"""
    return config.step_gamma ** math.floor(t / config.step_size + 1e-9)


def _constant(t: float, config: TrialConfig) -> float:
    """lr throughout"""
    return 1.0


# As OPTIMIZERS: each entry's docstring describes it. All start after the warm-up, if any.
SCHEDULES: dict[str, Shape] = {"cosine": _cosine, "step": _step, "constant": _constant}


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
