"""TrialConfig: each bad value is rejected with one line that names the field."""

from __future__ import annotations

import pytest

from carsweep.config.io import load_model
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError

BAD_VALUES = [
    ("optimizer", "lbfgs"), ("lr", 0), ("lr", -0.1), ("weight_decay", -1e-4),
    ("momentum", 1.0), ("nesterov", "maybe"), ("epochs", 0), ("batch_size", 0),
    ("resize", 8), ("augmentation", ""), ("label_smoothing", 1.0), ("lr_schedule", "poly"),
    ("step_size", 0), ("step_gamma", 0), ("step_gamma", 1.5), ("warmup_epochs", -1),
    ("seed", -1), ("weights", ""), ("freeze_backbone_epochs", -1), ("bbox_crop", "perhaps"),
    ("deterministic", "sometimes"), ("num_workers", -1), ("device", "tpu"), ("lr", "fast"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_value_is_one_line_naming_the_field(field, value):
    with pytest.raises(UserError, match=f"`{field}`") as caught:
        load_model(TrialConfig, None, [f"{field}={value}"])
    assert "\n" not in str(caught.value)


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(UserError, match="unknown key `learning_rate`"):
        load_model(TrialConfig, None, ["learning_rate=0.1"])


@pytest.mark.parametrize("field", ["warmup_epochs", "freeze_backbone_epochs"])
def test_epochs_must_outlast_warmup_and_freezing(field):
    with pytest.raises(UserError, match=f"{field} is 3, but must be < epochs"):
        load_model(TrialConfig, None, ["epochs=3", f"{field}=3"])


def test_defaults_are_valid_and_yaml_overrides_apply(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("optimizer: adamw\nlr: 0.001\nresize: 400\n")
    config = load_model(TrialConfig, path, ["augmentation=flip+color-jitter"])
    assert (config.optimizer, config.lr, config.resize) == ("adamw", 0.001, 400)
    assert config.augmentation == "flip+color-jitter"
    assert TrialConfig().weights == "none"


@pytest.mark.parametrize(("written", "meant"), [("off", "off"), ("on", "on"), ("auto", "auto"),
                                                ("'off'", "off")])
def test_data_cache_on_and_off_read_as_written_not_as_yaml_booleans(tmp_path, written, meant):
    path = tmp_path / "trial.yaml"
    path.write_text(f"data_cache: {written}\n")
    assert load_model(TrialConfig, path, []).data_cache == meant
    assert load_model(TrialConfig, None, [f"data_cache={written}"]).data_cache == meant
