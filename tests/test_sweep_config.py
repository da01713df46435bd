"""SweepConfig: the YAML space, defaults, overrides, and one-line errors naming the field."""

from __future__ import annotations

import pytest
import yaml

from carsweep.config.sweep import SweepConfig, load_sweep, save_sweep
from carsweep.errors import UserError

SPACE = {
    "optimizer": {"choice": ["sgd", "adam"]},
    "lr": {"loguniform": [1.0e-4, 0.1]},
    "momentum": {"uniform": [0.8, 0.95]},
    "epochs": {"choice": [2, 4]},
    "warmup_epochs": {"int": [0, 1]},
    "num_workers": 0,
}


def write(tmp_path, data, name="demo.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_space_kinds_and_defaults(tmp_path):
    config = load_sweep(write(tmp_path, {"space": SPACE}))
    assert config.name == "demo"  # from the file's stem
    assert (config.metric, config.mode) == ("val_top1", "max")
    assert config.space["lr"].kind == "loguniform"
    assert config.space["num_workers"].kind == "fixed"
    assert config.fixed() == {"num_workers": 0}
    assert set(config.searched()) == {"optimizer", "lr", "momentum", "epochs", "warmup_epochs"}
    assert config.max_t == 4  # the largest epochs value


def test_max_t_set_explicitly_and_without_epochs_in_space(tmp_path):
    assert load_sweep(write(tmp_path, {"asha": {"max_t": 3}, "space": SPACE})).max_t == 3
    assert load_sweep(write(tmp_path, {"space": {"lr": 0.1}})).max_t == 10  # TrialConfig default


def test_momentum_is_conditional_on_searched_optimizer(tmp_path):
    config = load_sweep(write(tmp_path, {"space": SPACE}))
    assert config.conditions("momentum") == {"optimizer": ["sgd", "rmsprop"]}
    fixed_optimizer = {**SPACE, "optimizer": "sgd"}
    assert load_sweep(write(tmp_path, {"space": fixed_optimizer})).conditions("momentum") == {}


def test_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path, {"num_samples": 8, "space": SPACE})
    overrides = ["num_samples=3", "name=other", "space.lr=0.05", "asha.grace_period=2"]
    config = load_sweep(path, overrides)
    assert (config.num_samples, config.name, config.asha.grace_period) == (3, "other", 2)
    assert config.space["lr"].kind == "fixed"
    assert config.space["lr"].values == [0.05]


def test_saved_sweep_reads_back_equal(tmp_path):
    nesterov = {"fixed": True, "when": {"optimizer": ["sgd"]}}
    config = load_sweep(write(tmp_path, {"space": {**SPACE, "nesterov": nesterov}}))
    save_sweep(config, tmp_path / "out" / "sweep.yaml")
    again = load_sweep(tmp_path / "out" / "sweep.yaml", ["name=demo"])
    assert again == config


def test_fractional_gpu_allowed(tmp_path):
    config = load_sweep(write(tmp_path, {"resources": {"cpu": 2, "gpu": 0.25}}))
    assert config.resources.gpu == 0.25


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"bogus": 1}, "unknown key `bogus`"),
        ({"space": {"bogus": 1}}, "unknown hyperparameter `bogus`"),
        ({"space": {"lr": -0.1}}, "`space.lr` = -0.1"),
        ({"space": {"lr": {"uniform": [-0.1, 0.1]}}}, "`space.lr` = -0.1"),
        ({"space": {"lr": {"loguniform": [0, 0.1]}}}, "low > 0"),
        ({"space": {"lr": {"uniform": [0.1, 0.01]}}}, "low < high"),
        ({"space": {"optimizer": {"choice": []}}}, "choice list is empty"),
        ({"space": {"optimizer": {"choice": ["sgd", "lion"]}}}, "`space.optimizer` = 'lion'"),
        ({"space": {"lr": {"choice": [0.1], "uniform": [0, 1]}}}, "exactly one of"),
        ({"space": {"epochs": {"int": [1.5, 3]}}}, "must be integers"),
        ({"space": {"epochs": {"choice": [2, 6]}, "warmup_epochs": {"int": [0, 2]}}},
         "warmup_epochs is 2, but must be < epochs (2)"),
        ({"metric": "accuracy"}, "`metric` = 'accuracy'"),
        ({"mode": "best"}, "`mode` = 'best'"),
        ({"num_samples": 0}, "`num_samples` = 0"),
        ({"resources": {"gpu": -1}}, "`resources.gpu` = -1"),
        ({"resources": {"gpu": 1.5}}, "whole number"),
        ({"asha": {"reduction_factor": 1}}, "`asha.reduction_factor` = 1"),
        ({"asha": {"grace_period": 5}, "space": {"epochs": 3}}, "`asha.grace_period` is 5"),
        ({"space": {"momentum": {"uniform": [0.8, 0.9], "when": {"optimiser": ["sgd"]}}}},
         "`space.momentum.when`"),
        ({"space": SPACE, "searcher": {"points_to_evaluate": [{"lr": 0.5}]}},
         "outside the range"),
        ({"space": SPACE, "searcher": {"points_to_evaluate": [{"batch_size": 8}]}},
         "not a searched parameter"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path, data, expected):
    with pytest.raises(UserError) as caught:
        load_sweep(write(tmp_path, data))
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "demo.yaml"))


def test_demo_and_cars_configs_are_valid():
    demo = load_sweep("configs/demo.yaml")
    cars = load_sweep("configs/stanford-cars.yaml")
    assert demo.num_samples >= 8
    assert demo.scheduler == "asha"
    assert demo.resources.gpu == 0
    assert cars.resources.gpu > 0
    assert isinstance(SweepConfig.model_validate(demo.to_yaml_dict()), SweepConfig)
