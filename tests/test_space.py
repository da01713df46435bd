"""The define-by-run space: every kind samples inside its bounds; conditions hold."""

from __future__ import annotations

import optuna
import pytest

from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.search.space import DefineByRunSpace

SPACE = {
    "optimizer": {"choice": ["sgd", "adam", "rmsprop"]},
    "lr": {"loguniform": [1.0e-4, 0.1]},
    "momentum": {"uniform": [0.8, 0.95]},
    "warmup_epochs": {"int": [0, 2]},
    "batch_size": {"int": [8, 64], "log": True},
    "epochs": 4,
}


@pytest.fixture
def sampled():
    space = DefineByRunSpace(SweepConfig.model_validate({"space": SPACE}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [space.sample_all(study.ask()) for _ in range(60)]


def test_every_kind_is_sampled_within_its_bounds(sampled):
    for params in sampled:
        assert params["optimizer"] in ("sgd", "adam", "rmsprop")
        assert 1e-4 <= params["lr"] <= 0.1
        assert params["warmup_epochs"] in (0, 1, 2)
        assert 8 <= params["batch_size"] <= 64
        assert isinstance(params["batch_size"], int)
        assert params["epochs"] == 4  # fixed: returned, not suggested
        TrialConfig.model_validate(params)  # every sample is a valid trial


def test_momentum_only_for_sgd_and_rmsprop(sampled):
    with_momentum = {p["optimizer"] for p in sampled if "momentum" in p}
    without = {p["optimizer"] for p in sampled if "momentum" not in p}
    assert with_momentum == {"sgd", "rmsprop"}
    assert without == {"adam"}
    assert all(0.8 <= p["momentum"] <= 0.95 for p in sampled if "momentum" in p)


def test_fixed_values_are_not_in_the_study():
    space = DefineByRunSpace(SweepConfig.model_validate({"space": SPACE}))
    trial = optuna.create_study().ask()
    space(trial)
    assert "epochs" not in trial.params


def test_explicit_when_overrides_the_implied_condition():
    config = SweepConfig.model_validate({"space": {
        **SPACE, "momentum": {"uniform": [0.8, 0.95], "when": {"optimizer": ["rmsprop"]}},
    }})
    space = DefineByRunSpace(config)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    samples = [space.sample_all(study.ask()) for _ in range(40)]
    assert {p["optimizer"] for p in samples if "momentum" in p} == {"rmsprop"}


def test_log_uniform_spreads_over_decades(sampled):
    # Uniform on a log scale: about a third of 60 samples per decade of [1e-4, 1e-1].
    low_decade = sum(p["lr"] < 1e-3 for p in sampled)
    assert 8 <= low_decade <= 35


BRANCHED = {
    "optimizer": {"choice": ["sgd", "adam", "rmsprop"]},
    "lr": [
        {"loguniform": [1.0e-3, 0.3], "when": {"optimizer": ["sgd"]}},
        {"loguniform": [1.0e-5, 3.0e-3], "when": {"optimizer": ["adam"]}},
        {"fixed": 1.0e-4, "when": {"optimizer": ["rmsprop"]}},
    ],
    "epochs": 4,
}


def test_each_branch_is_its_own_study_parameter_and_trials_get_the_field():
    space = DefineByRunSpace(SweepConfig.model_validate({"space": BRANCHED}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = [study.ask() for _ in range(45)]
    samples = [space.sample_all(trial) for trial in trials]
    ranges = {"sgd": (1.0e-3, 0.3), "adam": (1.0e-5, 3.0e-3), "rmsprop": (1.0e-4, 1.0e-4)}
    for trial, params in zip(trials, samples, strict=True):
        low, high = ranges[params["optimizer"]]
        assert low <= params["lr"] <= high
        assert set(params) == {"optimizer", "lr", "epochs"}  # field names only
        TrialConfig.model_validate(params)
        names = set(trial.params) - {"optimizer"}
        # TPE sees each range under its own name; the fixed branch is not suggested at all.
        assert names == {"sgd": {"lr|sgd"}, "adam": {"lr|adam"}, "rmsprop": set()}[
            params["optimizer"]]
    assert {p["optimizer"] for p in samples} == {"sgd", "adam", "rmsprop"}
    adam = next(t for t, p in zip(trials, samples, strict=True) if p["optimizer"] == "adam")
    assert adam.distributions["lr|adam"] == optuna.distributions.FloatDistribution(
        1.0e-5, 3.0e-3, log=True)
