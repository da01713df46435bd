"""`scheduler: pasha` under real Ray Tune: a deterministic function trainable whose curves force
one growth of the maximum and one resume (the case tests/test_pasha.py works by hand), one
trial at a time so the order is fixed; then what Ray and the study recorded, and the same sweep
replayed by bench/replay.py's simulated loop, which must take Tune's decisions. The replay is
also checked against Tune on seeded sweeps of a recording (the searcher's own suggestions, ASHA,
PASHA and median stopping), and on a median sweep whose driver stops and is resumed. And the
demo sweep, end to end, under pasha."""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from ray import cloudpickle, tune

from carsweep.cli import main
from carsweep.config.sweep import ClusterConfig, SweepConfig
from carsweep.results import trials_table
from carsweep.results.study import open_study
from carsweep.search.cluster import ray_session
from carsweep.search.searcher import searcher_resumed_in
from carsweep.search.tuner import (
    experiment_path,
    make_scheduler,
    new_tuner,
    study_ready_to_resume,
)

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"
sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import replay  # noqa: E402
from replay import Pool, ReplayController, config_key, sweep_config  # noqa: E402

# lr -> val_top1 per epoch (1-based); only the epochs each trial reaches matter
CURVES = {
    0.001: [0.5] * 27,                                          # a: pauses at rung 1
    0.002: [0.6, 0.65, 0.7] + [0.7 + e / 100 for e in range(4, 28)],  # b: leads rung 3
    0.003: [0.2] * 27,                                          # c: pauses at rung 1
    0.004: [0.9, 0.5, 0.6] + [0.6] * 24,                        # d: leads rung 1, not rung 3
}


# A recording's curves, one training seed per configuration, for the seeded sweeps
RECORDED: Pool | None = None

# (driver pid, marker file): trial c interrupts the driver as it starts, once (the marker says
# it has), and waits to be stopped, so the driver stops with a and b paused, c running
INTERRUPT: tuple[int, str] | None = None


def curve_trainable(config: dict) -> None:
    """Reports CURVES[lr] (or, for a sweep of a recording, RECORDED's curve nearest the config)
    from the epoch after its checkpoint's, a checkpoint every epoch."""
    if config["lr"] == 0.003 and INTERRUPT and not Path(INTERRUPT[1]).exists():
        Path(INTERRUPT[1]).touch()
        os.kill(INTERRUPT[0], signal.SIGUSR1)  # Tune's driver ends the run, as on Ctrl-C
        time.sleep(120)  # stopped by the driver long before
    if RECORDED is not None:
        values = [row["val_top1"] for row in RECORDED.curves[RECORDED.nearest(config)][0]]
    else:
        values = CURVES[config["lr"]]
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int((Path(folder) / "epoch").read_text())
    for epoch in range(start + 1, config["epochs"] + 1):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "epoch").write_text(str(epoch))
            tune.report({"epoch": epoch, "val_top1": values[epoch - 1], "resumed_from": start},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def curves_sweep(scheduler: str, storage: Path, epochs: int = 27, **changes) -> SweepConfig:
    return SweepConfig.model_validate({
        "name": scheduler, "storage_path": str(storage), "scheduler": scheduler,
        "num_samples": 4, "max_concurrent_trials": 1, "cluster": {"num_cpus": 1},
        "asha": {"grace_period": 1, "reduction_factor": 3},  # rungs 1, 3, 9; max_t 27
        "searcher": {"seed": 0, "points_to_evaluate": [{"lr": lr} for lr in CURVES]},
        "space": {"optimizer": "sgd", "lr": {"choice": list(CURVES)}, "batch_size": 32,
                  "augmentation": "none", "resize": 32, "epochs": epochs},
        **changes,
    })


def tune_fit(config: SweepConfig, *, interrupted: bool = False) -> tuple[dict, dict]:
    """(lr -> Ray's result rows, lr -> study trial) of the sweep under real Tune; `interrupted`:
    its driver stops once as the third trial starts, and the sweep is resumed as `carsweep
    resume` resumes it."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers lack tests/
    experiment = experiment_path(config)
    experiment.mkdir()  # run_sweep makes it (and writes sweep.yaml) first
    global INTERRUPT  # noqa: PLW0603 - pickled with curve_trainable, by value
    INTERRUPT = (os.getpid(), str(experiment.parent / "interrupted")) if interrupted else None
    with ray_session(config.cluster):
        results = new_tuner(config, curve_trainable, verbose=0).fit()
        if interrupted:
            assert Path(INTERRUPT[1]).exists()
            saved, _finished = study_ready_to_resume(config, experiment)
            with searcher_resumed_in(experiment, saved):
                results = tune.Tuner.restore(str(experiment), trainable=curve_trainable,
                                             resume_unfinished=True, resume_errored=True).fit()
    assert not results.errors
    study = open_study(experiment_path(config))
    return ({result.config["lr"]: result.metrics_dataframe for result in results},
            {trial.params["lr"]: trial for trial in study.trials})


def replayed(config: SweepConfig) -> tuple[dict, dict]:
    """(lr -> epochs trained, lr -> study trial) of the same sweep in bench/replay.py's loop."""
    epochs = config.max_t
    pool = Pool(epochs=epochs, lrs={"sgd": list(CURVES)}, curves={
        config_key({"optimizer": "sgd", "lr": lr, "batch_size": 32, "augmentation": "none",
                    "resize": 32}): [[{"epoch": e, "val_top1": v, "epoch_time_s": 1.0}
                                      for e, v in enumerate(curve[:epochs], 1)]]
        for lr, curve in CURVES.items()})
    loop = ReplayController(pool, config, make_scheduler(config), workers=1, start_cost=0,
                            seed=0).run()
    return ({trial.config["lr"]: loop.epoch[trial.trial_id] for trial in loop.trials},
            {trial.params["lr"]: trial for trial in loop.study.trials})


@pytest.fixture(scope="class")
def one_local_ray():
    """One local Ray of 1 CPU for the class's sweeps: ray_session finds it started and leaves it
    be (a start and a shutdown cost about 5 s here)."""
    with ray_session(ClusterConfig(num_cpus=1)):
        yield


@pytest.mark.slow
@pytest.mark.usefixtures("one_local_ray")
class TestUnderTune:
    """Sweeps of recorded or made-up curves under Tune's own loop, on one Ray."""

    def test_pasha_grows_once_resumes_once_and_the_study_stays_true_across_a_driver_restart(
            self, tmp_path):
        """The driver stops as trial c starts (a paused at rung 1, b at rung 3) and the sweep is
        resumed: PASHA's rungs, rebuilt from the trials' results, take the decisions the sweep
        would have taken without the stop (the replay's, uninterrupted): a and b wait paused,
        not run on."""
        config = curves_sweep("pasha", tmp_path)
        rows, study = tune_fit(config, interrupted=True)
        assert {lr: list(rows[lr]["epoch"]) for lr in CURVES} == {
            0.001: [1], 0.002: list(range(1, 10)), 0.003: [1], 0.004: [1, 2, 3]}
        # b paused at 3, was resumed once (from its epoch-3 checkpoint) when the maximum grew to 9
        assert list(rows[0.002]["resumed_from"]) == [0, 0, 0] + [3] * 6
        assert all(set(rows[lr]["resumed_from"]) == {0} for lr in (0.001, 0.003, 0.004))
        assert {lr: trial.state for lr, trial in study.items()} == {
            0.001: TrialState.PRUNED, 0.002: TrialState.COMPLETE,  # b: at the final maximum, 9
            0.003: TrialState.PRUNED, 0.004: TrialState.PRUNED}
        assert study[0.002].value == pytest.approx(0.79)
        for lr, trial in study.items():
            reached = len(rows[lr])
            assert trial.intermediate_values == pytest.approx(
                {epoch: CURVES[lr][epoch - 1] for epoch in range(1, reached + 1)})
        assert_replay_takes_tunes_decisions(config, rows, study)

    def test_the_replay_takes_tunes_decisions_on_seeded_sweeps_of_a_recording(self, tmp_path):
        """The product's TPE over bench/curves/main.json's configurations (one training seed
        each), 4 trials one at a time, under ASHA (seed 0), PASHA (seed 1) and median stopping
        (seed 6, where it stops one of the 4): the replay's study — every trial's suggested
        params, state and per-epoch values — is the one Tune's sweep left."""
        global RECORDED  # noqa: PLW0603 - pickled with curve_trainable, by value
        pool = Pool.load(replay.MAIN)
        pool.curves = {key: curves[:1] for key, curves in pool.curves.items()}
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers lack tests/
        cloudpickle.register_pickle_by_value(replay)  # and bench/
        sweeps = [sweep_config(pool, {"scheduler": scheduler, "name": f"{scheduler}-{seed}",
                                      "storage_path": str(tmp_path), "cluster": {"num_cpus": 1}},
                               "tpe", seed, trials=4, workers=1)
                  for scheduler, seed in (("asha", 0), ("pasha", 1), ("median", 6))]
        RECORDED = pool
        try:
            with ray_session(sweeps[0].cluster):
                for config in sweeps:
                    experiment_path(config).mkdir()
                    assert not new_tuner(config, curve_trainable, verbose=0).fit().errors
        finally:
            RECORDED = None
        stopped, resumed = {}, 0
        for config in sweeps:
            loop = ReplayController(pool, config, make_scheduler(config), workers=1, start_cost=0,
                                    seed=config.searcher.seed).run()
            tuned = open_study(experiment_path(config)).trials
            replayed_trials = [_decided(t) for t in loop.study.trials]
            assert replayed_trials == [_decided(t) for t in tuned], config.name
            stopped[config.scheduler] = sum(t.state == TrialState.PRUNED for t in tuned)
            resumed += loop.starts - len(loop.trials)
        assert stopped["asha"]  # the schedulers took decisions: stops,
        assert stopped["median"]
        assert resumed  # and PASHA's resumes

    def test_the_median_rule_of_a_resumed_sweep_counts_the_trials_that_ended_before(
            self, tmp_path):
        """The driver stops as trial c starts, a and b having run their 9 epochs (no rule stopped
        them: fewer than 2 others to compare with). Resumed, the rule takes back a's and b's
        epochs, so c (0.2) is below their median (0.6) at epoch 3 and stops, as it would have
        without the stop; a rule that started empty would let c run on, and d too."""
        config = curves_sweep("median", tmp_path, epochs=9,
                              median={"grace_period": 3, "min_samples_required": 2})
        rows, study = tune_fit(config, interrupted=True)
        assert {lr: len(rows[lr]) for lr in CURVES} == {0.001: 9, 0.002: 9, 0.003: 3, 0.004: 9}
        assert {lr: trial.state for lr, trial in study.items()} == {
            0.001: TrialState.COMPLETE, 0.002: TrialState.COMPLETE,
            0.003: TrialState.PRUNED, 0.004: TrialState.COMPLETE}
        assert_replay_takes_tunes_decisions(config, rows, study)


def _decided(trial) -> tuple:
    return trial.params, trial.state, trial.intermediate_values


def assert_replay_takes_tunes_decisions(config: SweepConfig, rows: dict, study: dict) -> None:
    replay_epochs, replay_study = replayed(config)
    assert replay_epochs == {lr: int(rows[lr]["epoch"].max()) for lr in CURVES}
    assert {lr: t.state for lr, t in replay_study.items()} == {
        lr: t.state for lr, t in study.items()}
    assert {lr: t.intermediate_values for lr, t in replay_study.items()} == {
        lr: t.intermediate_values for lr, t in study.items()}


@pytest.mark.slow
def test_the_demo_sweep_runs_end_to_end_under_pasha(prepared_dataset, tmp_path, capsys):
    """configs/demo.yaml with `scheduler: pasha` through the CLI, shrunk to 4 trials of
    3 epochs (rungs 1, 2; the maximum starts at 2 and max_t is 3)."""
    storage = tmp_path / "results"
    code = main(["sweep", str(DEMO), "--data", str(prepared_dataset), "--storage", str(storage),
                 "--set", "scheduler=pasha", "--set", "num_samples=4",
                 "--set", "space.epochs=3"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    table = trials_table(storage / "demo")
    assert len(table) == 4
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert (table["state"] == "COMPLETE").any()  # at the final maximum, or all 3 epochs
    complete = table[table["state"] == "COMPLETE"]
    assert complete["epochs_run"].min() >= 2, complete  # the starting maximum at least
    assert (table["stopped_early"] == (table["state"] == "PRUNED")).all()
    said = re.search(r"^best trial: (\w+)  val_top1 = (\d+\.\d\d)%$", out, re.MULTILINE)
    assert said, out[-2000:]  # a share of images: a percentage, as train and analyze print it
    best = table.set_index("trial_id").loc[said[1], "best_val_top1"]
    assert float(said[2]) == round(best * 100, 2) == round(table["best_val_top1"].max() * 100, 2)
