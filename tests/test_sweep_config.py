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


BRANCHED = {
    "optimizer": {"choice": ["sgd", "adam", "adamw", "rmsprop"]},
    "lr": [
        {"loguniform": [1.0e-3, 0.3], "when": {"optimizer": ["sgd"]}},
        {"loguniform": [1.0e-5, 3.0e-3], "when": {"optimizer": ["adam", "adamw"]}},
        {"fixed": 1.0e-4, "when": {"optimizer": ["rmsprop"]}},
    ],
    "epochs": 4,
}


def test_a_range_per_optimizer(tmp_path):
    config = load_sweep(write(tmp_path, {"space": BRANCHED}))
    lr = config.space["lr"]
    assert lr.kind == "branches"
    assert [b.kind for b in lr.branches] == ["loguniform", "loguniform", "fixed"]
    assert lr.values == [1.0e-3, 0.3, 1.0e-5, 3.0e-3, 1.0e-4]  # every value a trial can get
    assert set(config.searched()) == {"optimizer", "lr"}  # varies with the optimizer
    assert config.fixed() == {"epochs": 4}
    assert config.conditions("lr") == {"optimizer": ["sgd", "adam", "adamw", "rmsprop"]}
    assert [(p.name, p.field) for p in config.parameters()] == [
        ("optimizer", "optimizer"), ("lr|sgd", "lr"), ("lr|adam,adamw", "lr"),
        ("lr|rmsprop", "lr")]
    assert config.branch("lr", {"optimizer": "adamw"})[0] == 1
    assert config.branch("lr", {"optimizer": "lion"}) is None


def test_branched_field_reads_back_and_gives_max_t(tmp_path):
    space = {**BRANCHED, "epochs": [{"fixed": 2, "when": {"optimizer": ["sgd"]}},
                                    {"choice": [3, 6], "when": {"optimizer": ["adam"]}}],
             "warmup_epochs": [{"fixed": 1, "when": {"optimizer": ["sgd"]}},
                               {"int": [0, 2], "when": {"optimizer": ["adam"]}}]}
    config = load_sweep(write(tmp_path, {"space": space}))
    # warm-up 2 with epochs 2 would be invalid, but no trial gets both: each is per optimizer.
    assert config.max_t == 6
    save_sweep(config, tmp_path / "out" / "sweep.yaml")
    assert yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())["space"]["lr"] == (
        BRANCHED["lr"])  # written as the YAML list it was read from
    assert load_sweep(tmp_path / "out" / "sweep.yaml", ["name=demo"]) == config


def test_points_to_evaluate_go_to_the_branch_their_optimizer_selects(tmp_path):
    points = [{"optimizer": "adam", "lr": 1e-4}, {"optimizer": "sgd", "lr": 0.01},
              {"optimizer": "rmsprop", "lr": 1e-4}]
    config = load_sweep(write(tmp_path, {"space": BRANCHED,
                                         "searcher": {"points_to_evaluate": points}}))
    assert [config.searcher_point(p) for p in points] == [
        {"optimizer": "adam", "lr|adam,adamw": 1e-4}, {"optimizer": "sgd", "lr|sgd": 0.01},
        {"optimizer": "rmsprop"}]  # a fixed branch is returned by the space, not suggested


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
        ({"name": "../../escape"}, "`name` = '../../escape' is invalid: it names a folder "
         "inside storage_path"),
        ({"name": "runs/demo"}, "one folder name, without / or \\"),
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
        # A range per optimizer: each branch checked as a spec, named `space.lr[i]`.
        ({"space": {**BRANCHED, "lr": []}},
         "`space.lr` = [] is invalid: a list of branches needs at least one branch"),
        ({"space": {**BRANCHED, "lr": [BRANCHED["lr"][0],
                                       {"loguniform": [0, 0.1], "when": {"optimizer": ["adam"]}}]}},
         "`space.lr[1]` = {'loguniform': [0, 0.1], 'when': {'optimizer': ['adam']}} is invalid: "
         "log-scale range [0, 0.1] must have low > 0"),
        ({"space": {**BRANCHED, "lr": [BRANCHED["lr"][0],
                                       {"uniform": [0.1, 20], "when": {"optimizer": ["adam"]}}]}},
         "`space.lr[1]` = 20 is invalid: Input should be less than or equal to 10"),
        ({"space": {**BRANCHED, "lr": [BRANCHED["lr"][0], {"loguniform": [1e-5, 1e-3]}]}},
         "`space.lr[1]` has no `when`; each branch says which trials it is for"),
        ({"space": {**BRANCHED, "lr": [BRANCHED["lr"][0], [0.1, 0.2]]}},
         "`space.lr[1]` is a list; a branch is one spec"),
        ({"space": {**BRANCHED, "lr": [{"fixed": 0.1, "when": {"optimiser": ["sgd"]}}]}},
         "`space.lr[0].when`: `optimiser` is not another parameter of the space"),
        ({"space": {**BRANCHED, "lr": [{"fixed": 0.1, "when": {"optimizer": ["lion"]}}]}},
         "`space.lr[0].when.optimizer` = ['lion'] are not among its choices"),
        ({"space": {**BRANCHED, "batch_size": {"choice": [32, 64]},
                    "lr": [BRANCHED["lr"][0], {"fixed": 0.1, "when": {"batch_size": [64]}}]}},
         "`space.lr`: its branches are selected by batch_size, optimizer; every branch of lr "
         "must be selected by the same one parameter"),
        ({"space": {**BRANCHED, "optimizer": "sgd"}},
         "`space.lr`: its branches are selected by `optimizer`, which is fixed"),
        ({"space": {**BRANCHED, "momentum": [{"fixed": 0.9, "when": {"optimizer": ["sgd"]}}],
                    "lr": [{"fixed": 0.1, "when": {"momentum": [0.9]}}]}},
         "`space.lr`: its branches are selected by `momentum`, which has branches itself"),
        ({"space": {**BRANCHED, "weights": {"choice": ["none", "/w/start.pt"]},
                    "lr": [{"fixed": 0.1, "when": {"weights": ["/w/start.pt"]}}]}},
         "`space.lr`: a branch cannot be selected by '/w/start.pt'"),
        ({"space": {**BRANCHED, "lr": [BRANCHED["lr"][0],
                                       {"fixed": 0.1, "when": {"optimizer": ["adam", "sgd"]}}]}},
         "`space.lr[0]` and `space.lr[1]` overlap: both apply where optimizer is 'sgd'"),
        ({"space": {**BRANCHED, "warmup_epochs": [{"fixed": 4, "when": {"optimizer": ["sgd"]}}]}},
         "space: some trials would be invalid: warmup_epochs is 4, but must be < epochs (4)"),
        ({"space": BRANCHED, "searcher": {"points_to_evaluate": [{"lr": 0.01}]}},
         "`searcher.points_to_evaluate[0]`: `lr` has a branch per optimizer; give optimizer too"),
        ({"space": {**BRANCHED, "lr": BRANCHED["lr"][:2]},
          "searcher": {"points_to_evaluate": [{"optimizer": "rmsprop", "lr": 0.01}]}},
         "no branch of `space.lr` applies where optimizer is 'rmsprop'"),
        ({"space": BRANCHED, "searcher": {"points_to_evaluate": [{"optimizer": "adam",
                                                                  "lr": 0.01}]}},
         "lr = 0.01 is invalid: outside the range [1e-05, 0.003] of `space.lr[1]`"),
        ({"space": BRANCHED, "searcher": {"points_to_evaluate": [{"optimizer": "rmsprop",
                                                                  "lr": 0.01}]}},
         "lr = 0.01 is invalid: not the fixed value 0.0001 of `space.lr[2]`"),
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


# Reading YAML as people write it ------------------------------------------------------------

def test_numbers_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "tutorial.yaml"
    path.write_text("space:\n  lr: {loguniform: [1e-4, 1e-2]}\n"
                    "  weight_decay: {choice: [0, 1e-5, 1E-4]}\n"
                    "searcher:\n  points_to_evaluate: [{lr: 1e-3}]\n")
    config = load_sweep(path, ["space.label_smoothing=1e-1"])
    assert config.space["lr"].values == [1e-4, 1e-2]
    assert config.space["weight_decay"].values == [0, 1e-5, 1e-4]
    assert config.searcher.points_to_evaluate == [{"lr": 1e-3}]
    assert config.space["label_smoothing"].values == [0.1]  # --set reads them the same way


@pytest.mark.parametrize(("text", "message"), [
    (b"name: a\nnum_samples: 4\nname: b\n",
     "not valid YAML at line 3: the key 'name' is given twice"),
    (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"),
    (b"name: x\nspace: &s\n  lr: *s\n",
     "a YAML anchor (&name) is used inside itself (*name), which makes an endless value"),
])
def test_a_config_file_yaml_cannot_read_as_meant_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(UserError) as raised:
        load_sweep(path)
    assert str(raised.value) == f"{path}: {message}"


def test_an_anchor_used_twice_is_fine(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text("space:\n  lr: &range {loguniform: [1.0e-4, 0.1]}\n"
                    "  weight_decay: *range\n")
    assert load_sweep(path).space["weight_decay"].values == [1.0e-4, 0.1]
