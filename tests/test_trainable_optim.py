"""Optimizers and lr schedules: every registry entry steps, and the lr curve's numbers."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from carsweep.config.trial import TrialConfig
from carsweep.trainable import OPTIMIZERS, SCHEDULES, lr_factor
from carsweep.trainable.optim import build_optimizer, build_scheduler


def test_registries_match_the_names_the_config_accepts():
    fields = TrialConfig.model_fields
    assert set(OPTIMIZERS) == set(typing.get_args(fields["optimizer"].annotation))
    assert set(SCHEDULES) == set(typing.get_args(fields["lr_schedule"].annotation))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("nesterov", [False, True])
def test_each_optimizer_steps_towards_lower_loss(name, nesterov):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    config = TrialConfig(optimizer=name, lr=0.05, nesterov=nesterov)
    optimizer = build_optimizer(model, config)
    inputs, targets = torch.randn(32, 4), torch.randn(32, 1)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert optimizer.param_groups[0]["lr"] == 0.05


def test_sgd_uses_momentum_and_nesterov():
    config = TrialConfig(optimizer="sgd", momentum=0.8, nesterov=True, weight_decay=0.01)
    group = build_optimizer(torch.nn.Linear(2, 2), config).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.8, True, 0.01)


def test_linear_warmup_ramps_from_a_tenth_to_the_peak():
    config = TrialConfig(epochs=10, warmup_epochs=2, lr_schedule="cosine")
    assert lr_factor(0.0, config) == pytest.approx(0.1)
    assert lr_factor(1.0, config) == pytest.approx(0.55)
    assert lr_factor(2.0, config) == pytest.approx(1.0)


def test_cosine_halves_midway_and_ends_at_zero():
    config = TrialConfig(epochs=10, warmup_epochs=2, lr_schedule="cosine")
    assert lr_factor(6.0, config) == pytest.approx(0.5)
    assert lr_factor(10.0, config) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(4.0, config) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_step_decays_by_gamma_every_step_size_epochs():
    config = TrialConfig(epochs=10, lr_schedule="step", step_size=3, step_gamma=0.1)
    assert [lr_factor(t, config) for t in (0, 2.9, 3, 5.5, 6, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.001]
    )


def test_constant_stays_at_the_peak_after_warmup():
    config = TrialConfig(epochs=5, warmup_epochs=1, lr_schedule="constant")
    assert [lr_factor(t, config) for t in (0, 0.5, 1, 4.9)] == pytest.approx([0.1, 0.55, 1, 1])


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_scheduler_sets_the_lr_of_each_optimizer_step(schedule):
    config = TrialConfig(epochs=4, warmup_epochs=1, lr=0.2, lr_schedule=schedule, step_size=2)
    steps_per_epoch = 5
    optimizer = build_optimizer(torch.nn.Linear(2, 2), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    used = []
    for _ in range(config.epochs * steps_per_epoch):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.2 * lr_factor(step / steps_per_epoch, config) for step in range(len(used))]
    assert used == pytest.approx(expected)
    assert used[0] == pytest.approx(0.02)
    assert "lr_lambdas" in scheduler.state_dict()
