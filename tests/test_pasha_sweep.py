"""`scheduler: pasha` under real Ray Tune: a deterministic function trainable whose curves force
one growth of the maximum and one resume (the case tests/test_pasha.py works by hand), one
trial at a time so the order is fixed; then what Ray and the study recorded."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from optuna.trial import TrialState
from ray import cloudpickle, tune

from carsweep.config.sweep import SweepConfig
from carsweep.results.study import open_study
from carsweep.search.cluster import ray_session
from carsweep.search.tuner import experiment_path, new_tuner

# lr -> val_top1 per epoch (1-based); only the epochs each trial reaches matter
CURVES = {
    0.001: [0.5] * 27,                                          # a: pauses at rung 1
    0.002: [0.6, 0.65, 0.7] + [0.7 + e / 100 for e in range(4, 28)],  # b: leads rung 3
    0.003: [0.2] * 27,                                          # c: pauses at rung 1
    0.004: [0.9, 0.5, 0.6] + [0.6] * 24,                        # d: leads rung 1, not rung 3
}


def curve_trainable(config: dict) -> None:
    """Reports CURVES[lr] from the epoch after its checkpoint's, a checkpoint every epoch."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text())
    for epoch in range(start + 1, config["epochs"] + 1):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch").write_text(str(epoch))
            tune.report({"epoch": epoch, "val_top1": CURVES[config["lr"]][epoch - 1],
                         "resumed_from": start},
                        checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_pasha_grows_once_resumes_once_and_the_study_stays_true(tmp_path):
    config = SweepConfig.model_validate({
        "name": "pasha", "storage_path": str(tmp_path), "scheduler": "pasha",
        "num_samples": 4, "max_concurrent_trials": 1, "cluster": {"num_cpus": 1},
        "asha": {"grace_period": 1, "reduction_factor": 3},  # rungs 1, 3, 9; max_t 27
        "searcher": {"seed": 0, "points_to_evaluate": [{"lr": lr} for lr in CURVES]},
        "space": {"lr": {"choice": list(CURVES)}, "epochs": 27},
    })
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers lack tests/
    experiment_path(config).mkdir()  # run_sweep makes it (and writes sweep.yaml) first
    with ray_session(config.cluster):
        results = new_tuner(config, curve_trainable, verbose=0).fit()
    assert not results.errors
    rows = {result.config["lr"]: result.metrics_dataframe for result in results}
    assert {lr: list(rows[lr]["epoch"]) for lr in CURVES} == {
        0.001: [1], 0.002: list(range(1, 10)), 0.003: [1], 0.004: [1, 2, 3]}
    # b paused at 3, was resumed once (from its epoch-3 checkpoint) when the maximum grew to 9
    assert list(rows[0.002]["resumed_from"]) == [0, 0, 0] + [3] * 6
    assert all(set(rows[lr]["resumed_from"]) == {0} for lr in (0.001, 0.003, 0.004))

    study = open_study(experiment_path(config))
    by_lr = {trial.params["lr"]: trial for trial in study.trials}
    assert {lr: trial.state for lr, trial in by_lr.items()} == {
        0.001: TrialState.PRUNED, 0.002: TrialState.COMPLETE,  # b: at the final maximum, 9
        0.003: TrialState.PRUNED, 0.004: TrialState.PRUNED}
    assert by_lr[0.002].value == pytest.approx(0.79)
    for lr, trial in by_lr.items():
        reached = len(rows[lr])
        assert trial.intermediate_values == pytest.approx(
            {epoch: CURVES[lr][epoch - 1] for epoch in range(1, reached + 1)})
