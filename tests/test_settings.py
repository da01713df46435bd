"""`carsweep settings`: every trial and sweep setting and every registry entry, from the source."""

from __future__ import annotations

import json

import pytest

from carsweep.cli import main
from carsweep.cli.settings import WIDTH, catalog
from carsweep.config.sweep import REPORTED_METRICS, SweepConfig
from carsweep.config.trial import FIELD_GROUPS, TrialConfig
from carsweep.trainable import AUGMENTATIONS, OPTIMIZERS, SCHEDULES
from carsweep.trainable.augment import register


def _settings(capsys, *flags: str) -> str:
    assert main(["settings", *flags]) == 0
    return capsys.readouterr().out


def _entry(text: str, name: str) -> str:
    """The entry of `name` (its line and the indented lines under it), whitespace collapsed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} "))
    end = next((i for i in range(start + 1, len(lines))
                if not lines[i].startswith("   ")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def _yaml_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def test_every_trial_field_is_listed_with_its_type_default_and_description(capsys):
    text = _settings(capsys)
    defaults = TrialConfig().model_dump()
    for name, field in TrialConfig.model_fields.items():
        entry = _entry(text, name)
        assert f"default {_yaml_text(defaults[name])}" in entry, entry
        assert " ".join(field.description.split()) in entry, entry
    assert "lr float, > 0, <= 10, default 0.01 peak learning rate" in _entry(text, "lr")
    assert _entry(text, "optimizer").startswith("optimizer sgd | adam | adamw | rmsprop, "
                                                "default sgd")
    assert max(len(line) for line in text.splitlines()) <= WIDTH


def test_trial_fields_are_grouped_each_once(capsys):
    grouped = [name for names in FIELD_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(TrialConfig.model_fields)
    text = _settings(capsys)
    order = [text.index(f"trial: {group}\n") for group in FIELD_GROUPS]
    assert order == sorted(order)
    assert "trial: other" not in text


def test_every_registry_entry_is_listed_with_its_doc(capsys):
    text = _settings(capsys)
    for registry in (OPTIMIZERS, SCHEDULES):
        for name, entry in registry.items():
            assert entry.__doc__, f"{name} has no docstring to list"
            assert _entry(text, name) == f"{name} {' '.join(entry.__doc__.split())}"
    for name, preset in AUGMENTATIONS.items():
        assert _entry(text, name) == f"{name} {' '.join(preset.doc.split())}"


def test_every_sweep_field_is_listed_nested_ones_by_dotted_name(capsys):
    text = _settings(capsys)
    defaults = SweepConfig().model_dump()
    listed = {entry["name"] for entry in catalog()["sweep"]}
    assert {"num_samples", "resources.gpu", "asha.grace_period", "searcher.seed",
            "cluster.address", "space"} <= listed
    for name in listed:
        section, _, field = name.partition(".")
        default = defaults[section][field] if field else defaults[section]
        assert f"default {_yaml_text(default)}" in _entry(text, name), name
    assert all(metric in _entry(text, "metric") for metric in REPORTED_METRICS)


def test_a_preset_registered_later_is_listed(capsys):
    register("test-only-posterize", "posterize to 2 bits, registered by a test",
             device=lambda size: None)(lambda size: None)
    try:
        text = _settings(capsys)
        names = [entry["name"] for entry in json.loads(_settings(capsys, "--json"))
                 ["augmentations"]]
    finally:
        del AUGMENTATIONS["test-only-posterize"]
    assert (_entry(text, "test-only-posterize")
            == "test-only-posterize posterize to 2 bits, registered by a test")
    assert names[-1] == "test-only-posterize"


def test_json_round_trips_to_the_catalog(capsys):
    listing = json.loads(_settings(capsys, "--json"))
    assert listing == catalog()
    trial = {entry["name"]: entry for entry in listing["trial"]}
    assert list(trial) == [name for names in FIELD_GROUPS.values() for name in names]
    assert trial["lr"] == {"group": "training", "name": "lr", "type": "float",
                           "constraints": {"gt": 0, "le": 10}, "default": 0.01,
                           "description": TrialConfig.model_fields["lr"].description}
    assert trial["device"]["choices"] == ["auto", "cpu", "cuda"]
    assert TrialConfig(**{name: entry["default"] for name, entry in trial.items()}) \
        == TrialConfig()


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_help_point_to_settings(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "carsweep settings" in " ".join(capsys.readouterr().out.split())



def test_a_reader_that_stops_early_gets_no_traceback():
    """`carsweep settings | head -1`: a pipe whose reader has gone ends the command quietly.
    The read end is closed before the command starts, so its first write meets EPIPE."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "carsweep", "settings"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env=os.environ | {"PYTHONPATH": os.getcwd()})
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141
