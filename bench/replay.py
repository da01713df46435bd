"""Replay recorded learning curves through the real schedulers and carsweep's searcher, on a
simulated clock: which scheduler picks a configuration as good as the best its sweep tried,
for how many GPU-seconds.

A discrete-event loop (as mfhpo-simulator and Syne Tune's simulator do) plays Ray Tune's part:
it asks the scheduler which trial to run (`choose_trial_to_run`), asks carsweep's searcher for
new trials (`suggest`, through Ray's ConcurrencyLimiter or PASHA's PauseAwareLimiter), and hands
every epoch's result to both (`on_trial_result`, `on_trial_complete`, `stop_trial` for a paused
trial the scheduler ends), with `workers` trials at once. The objects are the product's:
`make_scheduler` and `make_searcher` of a SweepConfig, Ray's Trial objects; only the training is
replaced by the recorded curves (bench/record_curves.py). A suggestion maps to the nearest
recorded configuration (its lr to the nearest recorded lr of its optimizer, in log space) and a
training seed drawn from the recorded ones.

Compute is counted in simulated GPU-seconds: every epoch costs its recorded time, and every
start of a trial's process (new, or resumed after a pause) costs `--start-cost` epochs of that
trial (a new process, the model built, a checkpoint loaded). The pick is the product's: the
trial with the best validation score at any epoch (the trials table's order). A configuration's
true score is its final-epoch validation top-1, averaged over the recorded seeds; the regret of
a sweep is the best true score among the configurations it tried minus its pick's.

    .venv/bin/python bench/replay.py bench/curves/main.json [--seeds 20] [--workers 4]
        [--trials 16] [--searchers random tpe "tpe paused as pruned"] [--schedulers asha ...]
    .venv/bin/python bench/replay.py --small     # seconds: 2 seeds of 8 trials, asha and pasha
"""

from __future__ import annotations

import argparse
import copy
import heapq
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from machine import describe, load_average
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    TrialScheduler,
)
from ray.tune.search import ConcurrencyLimiter
from scipy.stats import spearmanr

from carsweep.config.sweep import SweepConfig, load_sweep
from carsweep.search.pasha import PauseAwareLimiter
from carsweep.search.searcher import make_searcher
from carsweep.search.tuner import make_scheduler

METRIC = "val_top1"
HERE = Path(__file__).parent
MAIN = HERE / "curves" / "main.json"
CARS = HERE.parent / "configs" / "stanford-cars.yaml"
# name -> changes to the sweep config (the baseline first: the shipped scheduler's settings,
# scaled to the recording's epochs: rungs at about 10, 30, 90 % of max_t)
SCHEDULERS = {
    "asha": {"scheduler": "asha"},
    "pasha": {"scheduler": "pasha"},
    "fifo": {"scheduler": "fifo"},
    "asha grace 3": {"scheduler": "asha", "asha": {"grace_period": 3, "reduction_factor": 3}},
    "asha 2 brackets": {"scheduler": "asha"},  # Ray's ASHA with brackets=2: make_replay_scheduler
    "median stopping": {"scheduler": "median"},  # Ray's MedianStoppingRule, grace max_t / 4
    "asha on extrapolated": {"scheduler": "asha"},  # ExtrapolatingASHA below
    "asha grace from curves": {"scheduler": "asha"},  # GraceFromCurvesASHA below
}


class ExtrapolatingASHA(ASHAScheduler):
    """A curve-aware rule of carsweep's design, tried on the replay (not shipped): ASHA's rungs
    and cut, but a trial is ranked by its score plus the gain it made over the second half of
    its epochs so far (v_e + v_e - v_ceil(e/2)), so a slow starter still climbing is ranked
    where it is heading. At epoch 1 that is its score: pair it with a grace period above 1."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._curves: dict[str, dict[int, float]] = {}

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        epoch, value = int(result["epoch"]), float(result[METRIC])
        curve = self._curves.setdefault(trial.trial_id, {})
        curve[epoch] = value
        halfway = curve.get(math.ceil(epoch / 2), value)
        return super().on_trial_result(tune_controller, trial,
                                       {**result, METRIC: value + (value - halfway)})


class GraceFromCurvesASHA(FIFOScheduler):
    """A first rung chosen from the sweep's own early curves (carsweep's design, tried on the
    replay, not shipped): the first `probes` trials (the first wave, one per worker) train
    unstopped to max_t // reduction_factor epochs; the grace period is then the first epoch
    from which ASHA's cut among them (the top 1/reduction_factor) keeps the trials it keeps at
    that last probed epoch; ASHA with that grace takes over, every epoch so far replayed into
    its rungs (a trial its rungs would have stopped stops at its next result)."""

    def __init__(self, *, max_t: int, reduction_factor: float, probes: int):
        super().__init__()
        self.max_t, self.rf, self.probes = max_t, reduction_factor, probes
        self.probe_epochs = max(1, int(max_t // reduction_factor))
        self.curves: dict[str, dict[int, float]] = {}
        self.asha: ASHAScheduler | None = None
        self.grace: int | None = None
        self._to_stop: set[str] = set()

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self.curves[trial.trial_id] = {}
        if self.asha is not None:
            self.asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self.curves[trial.trial_id][int(result["epoch"])] = float(result[METRIC])
        if self.asha is None:
            if not self._probed():
                return TrialScheduler.CONTINUE
            self._hand_over(tune_controller)  # this result included
        elif trial.trial_id not in self._to_stop:
            return self.asha.on_trial_result(tune_controller, trial, result)
        return TrialScheduler.STOP if trial.trial_id in self._to_stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        if self.asha is not None and trial.trial_id in self.asha._trial_info:
            self.asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        if self.asha is not None and trial.trial_id in self.asha._trial_info:
            self.asha.on_trial_remove(tune_controller, trial)

    def _probed(self) -> bool:
        probes = list(self.curves)[: self.probes]
        return len(probes) == self.probes and all(
            self.probe_epochs in self.curves[t] for t in probes)

    def choose_grace(self) -> int:
        probes = list(self.curves)[: self.probes]

        def kept(epoch: int) -> set[str]:
            scores = {t: self.curves[t][epoch] for t in probes}
            cut = np.nanpercentile(list(scores.values()), (1 - 1 / self.rf) * 100)
            return {t for t, value in scores.items() if value >= cut}

        last = kept(self.probe_epochs)
        candidates = [e for e in range(1, self.probe_epochs + 1) if e * self.rf <= self.max_t]
        return next((e for e in candidates
                     if all(kept(later) == last for later in range(e, self.probe_epochs + 1))),
                    candidates[-1])

    def _hand_over(self, tune_controller) -> None:
        self.grace = self.choose_grace()
        self.asha = ASHAScheduler(time_attr="epoch", metric=METRIC, mode="max",
                                  max_t=self.max_t, grace_period=self.grace,
                                  reduction_factor=self.rf)
        for trial in tune_controller.get_trials():
            if trial.status == Trial.TERMINATED:
                continue
            self.asha.on_trial_add(tune_controller, trial)
            for epoch, value in sorted(self.curves[trial.trial_id].items()):
                result = {"epoch": epoch, METRIC: value}
                if self.asha.on_trial_result(tune_controller, trial, result) == \
                        TrialScheduler.STOP:
                    self._to_stop.add(trial.trial_id)
                    break


# The recorded pool ---------------------------------------------------------------------


@dataclass
class Pool:
    """Recorded curves by configuration (every field but the seed)."""

    epochs: int
    curves: dict[tuple, list[list[dict]]] = field(default_factory=dict)
    lrs: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Pool:
        record = json.loads(Path(path).read_text())
        pool = cls(epochs=record["epochs"])
        for run in record["runs"]:
            pool.curves.setdefault(config_key(run["config"]), []).append(run["curve"])
            pool.lrs.setdefault(run["config"]["optimizer"], []).append(run["config"]["lr"])
        pool.lrs = {opt: sorted(set(lrs)) for opt, lrs in pool.lrs.items()}
        return pool

    def nearest(self, params: dict) -> tuple:
        recorded = self.lrs[params["optimizer"]]
        lr = min(recorded, key=lambda value: abs(math.log(value / params["lr"])))
        key = config_key({**params, "lr": lr})
        if key not in self.curves:  # a recording cut short: the nearest that was recorded
            key = min(self.curves, key=lambda other: _distance(other, key))
        return key

    def true_score(self, key: tuple) -> float:
        return statistics.mean(curve[-1][METRIC] for curve in self.curves[key])


def config_key(config: dict) -> tuple:
    return (config["optimizer"], config["lr"], config["batch_size"], config["augmentation"],
            config["resize"])


def _distance(a: tuple, b: tuple) -> float:
    lr = abs(math.log(a[1] / b[1])) if a[0] == b[0] else 100.0
    return lr + sum(x != y for x, y in zip(a[2:], b[2:], strict=True))


def sweep_config(pool: Pool, changes: dict, searcher: str, seed: int, trials: int,
                 workers: int) -> SweepConfig:
    """The shipped Cars space's dimensions over the recorded values, and its scheduler and
    searcher settings scaled to the recording and the sweep's size: rungs 1, 3, 9 of 12 epochs
    (grace 1, reduction 3, where Cars has 3, 9, 27 of 30), TPE's random start-up the same share
    of the trials (8 of 128)."""
    cars = load_sweep(CARS)
    startup = max(2, round(cars.searcher.n_startup_trials * trials / cars.num_samples))
    return SweepConfig.model_validate({
        "metric": METRIC, "mode": "max", "num_samples": trials,
        "max_concurrent_trials": workers,
        "asha": {"grace_period": 1, "reduction_factor": 3},
        "searcher": {"algorithm": searcher, "seed": seed,
                     "n_startup_trials": startup},
        "space": {
            "optimizer": {"choice": sorted(pool.lrs)},
            "lr": [{**shipped_lr_range(opt), "when": {"optimizer": [opt]}}
                   for opt in sorted(pool.lrs)],
            "batch_size": {"choice": sorted({k[2] for k in pool.curves})},
            "augmentation": {"choice": sorted({k[3] for k in pool.curves})},
            "resize": {"choice": sorted({k[4] for k in pool.curves})},
            "epochs": pool.epochs,
        },
        **changes,
    })


def shipped_lr_range(optimizer: str) -> dict:
    """The lr range configs/stanford-cars.yaml searches for `optimizer`, e.g. {loguniform:
    [1e-5, 0.003]}."""
    _, spec = load_sweep(CARS).branch("lr", {"optimizer": optimizer})
    return {kind: values for kind, values in spec.to_yaml().items() if kind != "when"}


# What Ray's Tune controller gives schedulers and searchers ----------------------------------


class ReplaySearch:
    """The part of Ray's SearchGenerator a scheduler sees: the (limited) searcher, whether
    every trial is made, and the completion it forwards."""

    def __init__(self, searcher, num_samples: int):
        self.searcher, self.num_samples, self.made = searcher, num_samples, 0

    def suggest(self, trial_id: str) -> dict | None:
        if self.is_finished():
            return None
        config = self.searcher.suggest(trial_id)
        if config is not None:
            self.made += 1
        return config

    def is_finished(self) -> bool:
        return self.made >= self.num_samples

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)


@dataclass(order=True)
class _Event:
    at: float
    order: int
    trial_id: str = field(compare=False)


class ReplayController:
    """Ray's TuneController as the scheduler sees it, on a simulated clock (the loop is `run`)."""

    def __init__(self, pool: Pool, config: SweepConfig, scheduler: TrialScheduler,
                 workers: int, start_cost: float, seed: int, *, paused_as_pruned: bool = False):
        self.pool, self.config, self.scheduler = pool, config, scheduler
        self.workers, self.start_cost = workers, start_cost
        searcher = make_searcher(config)
        if paused_as_pruned:
            searcher.study.sampler = PausedSeenAsPruned(searcher.study.sampler)
        limiter = PauseAwareLimiter if config.scheduler == "pasha" else ConcurrencyLimiter
        self.search_alg = ReplaySearch(limiter(searcher, max_concurrent=workers),
                                       config.num_samples)
        self.study = searcher.study
        self._rng = np.random.default_rng(seed)
        self.trials: list[Trial] = []
        self.curve: dict[str, list[dict]] = {}
        self.key: dict[str, tuple] = {}
        self.epoch: dict[str, int] = {}  # epochs trained so far
        self.events: list[_Event] = []
        self.clock = self.gpu_s = 0.0
        self.starts = self._pushed = 0

    # Ray's interface
    def get_trials(self) -> list[Trial]:
        return self.trials

    def get_live_trials(self) -> set[Trial]:
        return {t for t in self.trials if t.status != Trial.TERMINATED}

    def stop_trial(self, trial: Trial) -> None:
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.search_alg.on_trial_complete(trial.trial_id)
        trial.set_status(Trial.TERMINATED)

    # The loop
    def run(self) -> ReplayController:
        while True:
            self._fill_workers()
            if not self.events:
                return self
            event = heapq.heappop(self.events)
            self.clock = event.at
            self._result(self._trial(event.trial_id))

    def _fill_workers(self) -> None:
        while len(self.events) < self.workers:
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                if not self._new_trial():
                    return
                continue
            self._start(trial)

    def _new_trial(self) -> bool:
        trial_id = f"t{len(self.trials):04d}"
        params = self.search_alg.suggest(trial_id)
        if params is None:
            return False
        key = self.pool.nearest(params)
        curves = self.pool.curves[key]
        self.curve[trial_id] = curves[int(self._rng.integers(len(curves)))]
        self.key[trial_id], self.epoch[trial_id] = key, 0
        trial = Trial("replay", config=params, trial_id=trial_id, stub=True)
        self.trials.append(trial)
        self.scheduler.on_trial_add(self, trial)
        return True

    def _start(self, trial: Trial) -> None:
        trial.set_status(Trial.RUNNING)
        self.starts += 1
        mean_epoch = statistics.mean(row["epoch_time_s"] for row in self.curve[trial.trial_id])
        self._next_epoch(trial, self.start_cost * mean_epoch)

    def _next_epoch(self, trial: Trial, extra: float = 0.0) -> None:
        seconds = self.curve[trial.trial_id][self.epoch[trial.trial_id]]["epoch_time_s"] + extra
        self.gpu_s += seconds
        self._pushed += 1  # ties in time go in the order they were scheduled
        heapq.heappush(self.events, _Event(self.clock + seconds, self._pushed, trial.trial_id))

    def _result(self, trial: Trial) -> None:
        trial_id = trial.trial_id
        self.epoch[trial_id] += 1
        row = self.curve[trial_id][self.epoch[trial_id] - 1]
        result = {"epoch": row["epoch"], METRIC: row[METRIC], "training_iteration": row["epoch"],
                  "config/epochs": self.pool.epochs, "trial_id": trial_id}
        trial.update_last_result(dict(result))
        decision = self.scheduler.on_trial_result(self, trial, result)
        if decision != TrialScheduler.STOP:
            self.search_alg.on_trial_result(trial_id, result)
        if decision == TrialScheduler.STOP or row["epoch"] == self.pool.epochs:
            self.scheduler.on_trial_complete(self, trial, result)
            self.search_alg.on_trial_complete(trial_id, result=result)
            trial.set_status(Trial.TERMINATED)
        elif decision == TrialScheduler.PAUSE:
            trial.set_status(Trial.PAUSED)
        else:
            self._next_epoch(trial)

    def _trial(self, trial_id: str) -> Trial:
        return next(t for t in self.trials if t.trial_id == trial_id)

    # What the sweep gives
    def outcome(self) -> dict:
        best_seen = {t: max(row[METRIC] for row in self.curve[t][: self.epoch[t]])
                     for t in self.curve}
        pick = max(best_seen, key=best_seen.get)  # the trials table's first row
        tried = {self.key[t] for t in self.curve}
        best_tried = max(self.pool.true_score(key) for key in tried)
        return {"regret": best_tried - self.pool.true_score(self.key[pick]),
                "pick": self.pool.true_score(self.key[pick]), "best_tried": best_tried,
                "gpu_s": self.gpu_s, "wall_s": self.clock, "starts": self.starts,
                "epochs": sum(self.epoch.values()), "trials": len(self.trials),
                "complete": sum(t.state.name == "COMPLETE" for t in self.study.trials),
                "final_max": getattr(self.scheduler, "current_max", None),
                "grace": getattr(self.scheduler, "grace", None)}


# The searchers: the product's (`searcher.algorithm` random or tpe), and one of this bench's:
# TPE reading a trial that reported epochs and has not ended (paused by PASHA, or training) as
# pruned at its last epoch, an answer to "under PASHA, TPE samples at random" (BENCHMARKS.md).
SEARCHERS = {"random": "random", "tpe": "tpe", "tpe paused as pruned": "tpe"}


class _PausedSeenAsPruned:
    """A study as the sampler reads it: a RUNNING trial with intermediate values is PRUNED at
    its last epoch (TPE scores pruned trials by their last epoch, then value); the study
    itself is unchanged (a pause never tells Optuna a trial ended)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        seen = [_as_pruned(trial) if trial.state == TrialState.RUNNING
                and trial.intermediate_values else trial
                for trial in self._study._get_trials(deepcopy=False, use_cache=use_cache)]
        return [trial for trial in seen if states is None or trial.state in states]


def _as_pruned(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    seen = copy.copy(trial)
    seen.state = TrialState.PRUNED
    return seen


class PausedSeenAsPruned(optuna.samplers.BaseSampler):
    """`sampler` reading the study through `_PausedSeenAsPruned`."""

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler

    def infer_relative_search_space(self, study, trial):
        return self.sampler.infer_relative_search_space(_PausedSeenAsPruned(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.sampler.sample_relative(_PausedSeenAsPruned(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.sampler.sample_independent(_PausedSeenAsPruned(study), trial, param_name,
                                               param_distribution)

    def before_trial(self, study, trial) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.sampler.after_trial(study, trial, state, values)


def make_replay_scheduler(name: str, config: SweepConfig) -> TrialScheduler:
    if name == "asha on extrapolated":
        return ExtrapolatingASHA(time_attr="epoch", metric=METRIC, mode="max",
                                 max_t=config.max_t, grace_period=2,
                                 reduction_factor=config.asha.reduction_factor)
    if name == "asha grace from curves":
        return GraceFromCurvesASHA(max_t=config.max_t,
                                   reduction_factor=config.asha.reduction_factor,
                                   probes=config.max_concurrent_trials)
    if name == "asha 2 brackets":  # half the trials start with their first rung at epoch 3
        return ASHAScheduler(time_attr="epoch", metric=METRIC, mode="max", max_t=config.max_t,
                             grace_period=config.asha.grace_period,
                             reduction_factor=config.asha.reduction_factor, brackets=2)
    return make_scheduler(config)


def replay(pool: Pool, scheduler: str, searcher: str, seed: int, *, trials: int, workers: int,
           start_cost: float) -> dict:
    config = sweep_config(pool, SCHEDULERS[scheduler], SEARCHERS[searcher], seed, trials,
                          workers)
    controller = ReplayController(pool, config, make_replay_scheduler(scheduler, config),
                                  workers, start_cost, seed,
                                  paused_as_pruned=searcher == "tpe paused as pruned")
    return controller.run().outcome()


def resolution_as_fidelity(pool: Pool, low: int, high: int) -> dict:
    """Issue 26's test of input resolution as a cheaper fidelity, over the configurations
    recorded at both `low` and `high` px: Spearman's ρ between their true scores at the two
    sizes, and what choosing at `low` loses at `high` (the high-px score of the configuration
    best at low px, against the best high-px score, in points)."""
    pairs = [(pool.true_score(key), pool.true_score((*key[:4], high)))
             for key in pool.curves if key[4] == low and (*key[:4], high) in pool.curves]
    if len(pairs) < 3:
        return {"configurations": len(pairs), "rho": float("nan"), "loss_pt": float("nan")}
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    chosen_low = max(pairs)[1]
    return {"configurations": len(pairs), "rho": float(rho),
            "loss_pt": 100 * (max(b for _, b in pairs) - chosen_low)}


# The table ------------------------------------------------------------------------------


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.{digits}f} ± {sd:.{digits}f}"


def _grace_counts(graces: list[str]) -> str:
    """'grace 1 x3, 2 x17': the first rungs a rule chose, and how often."""
    counts = {grace: graces.count(grace) for grace in sorted(set(graces), key=int)}
    return ("grace " + ", ".join(f"{g} x{n}" for g, n in counts.items())) if counts else ""


def table(results: dict[tuple[str, str], list[dict]], baseline: str) -> list[str]:
    lines = ["| searcher | scheduler | regret (pt) | picked within 0.5 pt | pick's top-1 (%) "
             "| GPU-s ÷ asha (same seed) | trial starts | epochs trained | COMPLETE in study "
             "| final max / grace |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (searcher, scheduler), outcomes in results.items():
        base = results[(searcher, baseline)]
        ratios = [o["gpu_s"] / b["gpu_s"] for o, b in zip(outcomes, base, strict=True)]
        within = sum(o["regret"] <= 0.005 for o in outcomes)
        final = sorted({o["final_max"] for o in outcomes if o["final_max"] is not None})
        graces = [str(o["grace"]) for o in outcomes if o.get("grace") is not None]
        lines.append(
            f"| {searcher} | {scheduler} | {_mean_sd([o['regret'] for o in outcomes], 100)} "
            f"| {within}/{len(outcomes)} | {_mean_sd([o['pick'] for o in outcomes], 100, 1)} "
            f"| {_mean_sd(ratios)} "
            f"| {statistics.mean(o['starts'] for o in outcomes):.1f} "
            f"| {statistics.mean(o['epochs'] for o in outcomes):.1f} "
            f"| {statistics.mean(o['complete'] for o in outcomes):.1f} "
            f"| {', '.join(map(str, final)) or _grace_counts(graces) or '-'} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curves", type=Path, nargs="?", default=MAIN)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4,
                        help="trials at once (Cars: 32 of 128, the same share)")
    parser.add_argument("--start-cost", type=float, default=0.25,
                        help="a trial process's start (and checkpoint load), in its epochs")
    parser.add_argument("--searchers", nargs="+", default=["random", "tpe"],
                        choices=list(SEARCHERS))
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS),
                        choices=list(SCHEDULERS))
    parser.add_argument("--json", type=Path, help="write every sweep's outcome here")
    parser.add_argument("--small", action="store_true",
                        help="2 seeds of 8 trials on 2 workers, asha and pasha: seconds")
    args = parser.parse_args(argv)
    if args.small:
        args.seeds, args.trials, args.workers = 2, 8, 2
        args.schedulers = ["asha", "pasha"]
    pool = Pool.load(args.curves)
    started, start_load = time.time(), load_average()
    results: dict[tuple[str, str], list[dict]] = {}
    for searcher in args.searchers:
        for scheduler in args.schedulers:
            results[(searcher, scheduler)] = [
                replay(pool, scheduler, searcher, seed, trials=args.trials,
                       workers=args.workers, start_cost=args.start_cost)
                for seed in range(args.seeds)]
    print(describe(start_load))  # the figures are simulated; only its seconds are the machine's
    print(f"{args.curves}: {len(pool.curves)} configurations, {pool.epochs} epochs; "
          f"{args.seeds} seeds of {args.trials} trials on {args.workers} workers, start cost "
          f"{args.start_cost:g} epoch; {time.time() - started:.0f} s")
    print("\n".join(table(results, baseline=args.schedulers[0])))
    sizes = sorted({key[4] for key in pool.curves})
    if len(sizes) > 1:
        fidelity = resolution_as_fidelity(pool, sizes[0], sizes[-1])
        print(f"resolution as a fidelity, over the {fidelity['configurations']} configurations "
              f"recorded at {sizes[0]} and {sizes[-1]} px: Spearman ρ of their final scores "
              f"{fidelity['rho']:.2f}; the best at {sizes[0]} px is {fidelity['loss_pt']:.1f} pt "
              f"below the best at {sizes[-1]} px")
    if args.json:
        args.json.write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
