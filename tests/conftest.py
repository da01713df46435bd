"""Shared fixtures: one small synthetic source and its prepared dataset, made once per session.

    synthetic_source   carsweep synth output: 4 classes (round, square, triangle, bar
                       headlights), 24 train + 8 test images per class, 64 px, seed 0,
                       class-csv layout with car boxes, parts.csv with headlight boxes
    prepared_dataset   the folder `prepare` made of it: official split, val fraction 0.25
                       (per class: 18 train, 6 val, 8 test), parts.csv carried over

Both are read-only for tests: a test that changes data makes its own in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth import make_synthetic_dataset

SYNTH = {"classes": 4, "per_class": 24, "test_per_class": 8, "size": 64, "seed": 0}


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "source", **SYNTH)


@pytest.fixture(scope="session")
def prepared_dataset(synthetic_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_dataset(synthetic_source, out, split="official", val_fraction=0.25, seed=0,
                    warn=_no_warnings)
    return out


def _no_warnings(line: str) -> None:
    raise AssertionError(f"the shared synthetic dataset should prepare cleanly: {line}")
