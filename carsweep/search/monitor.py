"""What a person watches during a sweep: TensorBoard (scalars + HParams) and one console table.

The console table is `CompactReporter`, a Ray Tune ProgressReporter: Tune calls it from its own
loop, so there is no second progress loop. It prints carsweep's compact table
(results/console.py: trial, state, epoch, best metric, searched parameters, at most 110
characters) when a trial starts or ends, and on a terminal every few seconds while epochs come
in, redrawn in place; where the output is not a terminal (a log file, CI) a new table is
appended only when a trial starts or ends. At the end the live table is wiped from a terminal:
the sweep's summary (cli/sweep.py) prints the final one, best first. A resumed sweep's table
shows a trial that finished after Tune's last saved state as finished: Tune restarts it from
its last checkpoint, which trains and reports nothing, so Tune's own record of it stays the
older one (`reporter_resumed_with`).

Ray's TBXLoggerCallback writes per-epoch scalars for each trial but writes the HParams
summaries only when a trial ends, so a running or long trial is missing from TensorBoard's
HParams view. This subclass writes each trial's session-start (its hyperparameters) with its
first result; the view's metric columns come from the trial's latest scalars, so every trial
shows up from its first epoch with its latest metrics. At the end it writes the session's end
status. It writes no per-trial experiment summary, so TensorBoard builds the experiment from
all trials' sessions instead of picking one trial's.

A trial whose loss became NaN/inf ends with a report, not an exception (search/trial.py), so Ray
prints no traceback for it; `DivergedTrialsCallback` prints one line per such trial instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from ray.tune import Callback, ProgressReporter
from ray.tune.logger import TBXLoggerCallback
from ray.tune.utils import flatten_dict

from carsweep.config.sweep import DIVERGED, DIVERGED_MESSAGE
from carsweep.config.trial import TrialConfig
from carsweep.results.console import compact_table, state_counts
from carsweep.results.store import best_score

LIVE_ROWS = 20  # at most this many trials in the live table: running ones, then the best

# While Tune unpickles the reporter of a resumed sweep: the result rows of the trials that
# finished after Tune's saved state (search/tuner.py, `study_ready_to_resume`).
_finished_before_resume: dict[str, list[dict]] = {}


@contextmanager
def reporter_resumed_with(finished: dict[str, list[dict]]) -> Iterator[None]:
    """Within this block, a CompactReporter unpickled shows the trials in `finished` (trial id
    -> its result rows) as their rows say, where Tune's record of them is older."""
    global _finished_before_resume  # noqa: PLW0603 - read by CompactReporter.__setstate__
    _finished_before_resume = finished
    try:
        yield
    finally:
        _finished_before_resume = {}


class LiveHParamsCallback(TBXLoggerCallback):
    """TBXLoggerCallback whose trials appear in TensorBoard's HParams view from epoch one."""

    def __init__(self) -> None:
        super().__init__()
        self._hparams_written: set[str] = set()

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        super().log_trial_result(iteration, trial, result)
        if trial.trial_id not in self._hparams_written:
            self._write_session_start(trial)
            self._hparams_written.add(trial.trial_id)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        writer = self._trial_writer.get(trial)
        if writer is not None and trial.trial_id in self._hparams_written:
            writer.file_writer.add_summary(session_end_summary(failed))
        if writer is not None:
            writer.close()
            del self._trial_writer[trial]
            self._trial_result.pop(trial, None)

    def _write_session_start(self, trial: Any) -> None:
        from tensorboardX.summary import hparams

        params = hparam_values(trial.evaluated_params or trial.config)
        _experiment, session_start, _end = hparams(hparam_dict=params, metric_dict={})
        writer = self._trial_writer[trial]
        writer.file_writer.add_summary(session_start)
        writer.flush()


class DivergedTrialsCallback(Callback):
    """One console line per trial that diverged, when its last report arrives (printed above
    the live table, which is drawn again below it)."""

    def __init__(self, reporter: CompactReporter | None = None) -> None:
        self._told: set[str] = set()
        self._reporter = reporter

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get(DIVERGED) and trial.trial_id not in self._told:
            self._told.add(trial.trial_id)
            line = diverged_line(str(trial), result)
            if self._reporter is not None:
                self._reporter.say(line)
            else:
                print(line, flush=True)


def diverged_line(trial: str, result: dict) -> str:
    """`trial_ab12 diverged at epoch 2: training loss became nan ... (not retried)`."""
    return (f"{trial} diverged at epoch {result.get('epoch')}: {result[DIVERGED_MESSAGE]} "
            "(not retried)")


def session_end_summary(failed: bool) -> Any:
    """The HParams session-end record (tensorboardX only builds it together with the start)."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    info = SessionEndInfo(status=Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS"))
    content = HParamsPluginData(session_end_info=info, version=0).SerializeToString()
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content)
    )
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])


def hparam_values(params: dict[str, Any]) -> dict[str, Any]:
    """The values TensorBoard's HParams accepts (bool, number, string), flattened."""
    flat = flatten_dict(dict(params), delimiter="/")
    return {key: value for key, value in flat.items()
            if isinstance(value, bool | int | float | str)}


class CompactReporter(ProgressReporter):
    """The live trials table (see the module docstring). `tty` None: whether stdout is one."""

    def __init__(self, metric: str, mode: str, params: list[str], *, tty: bool | None = None,
                 every_s: float = 3.0) -> None:
        self._metric, self._mode, self._params = metric, mode, params
        self._tty, self._every_s = tty, every_s
        self._total: int | None = None
        self._drawn_lines = 0  # lines of the table now on the terminal, to redraw over
        self._last_states: tuple = ()
        self._last_epochs: tuple = ()
        self._last_time = 0.0
        self._finished_before: dict[str, list[dict]] = {}

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles it with the Tuner
        return self.__dict__ | {"_drawn_lines": 0, "_last_states": (), "_last_epochs": (),
                                "_finished_before": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _finished_before=_finished_before_resume)

    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              metric: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        self._total = total_samples

    def should_report(self, trials: list, done: bool = False) -> bool:
        states = tuple((t.trial_id, t.status) for t in trials)
        epochs = tuple((t.last_result or {}).get("epoch") for t in trials)
        if done or states != self._last_states:
            return True
        return (self._on_terminal() and epochs != self._last_epochs
                and time.monotonic() - self._last_time >= self._every_s)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        self._last_states = tuple((t.trial_id, t.status) for t in trials)
        self._last_epochs = tuple((t.last_result or {}).get("epoch") for t in trials)
        self._last_time = time.monotonic()
        if done:  # the sweep's summary prints the final table, best first
            self._erase()
        else:
            self._draw(self.table_text(trials))

    def say(self, line: str) -> None:
        """Print a line of its own above the live table."""
        self._erase()
        print(line, flush=True)

    def table_text(self, trials: list) -> str:
        table = live_table(trials, self._metric, self._mode, self._params,
                           self._finished_before)
        shown = _live_rows(table, self._metric, self._mode)
        more = f"; {len(table) - len(shown)} more in `carsweep status`" \
            if len(shown) < len(table) else ""
        return (compact_table(shown, self._metric, self._params)
                + f"\n{state_counts(table, self._total)}{more}")

    def _draw(self, text: str) -> None:
        self._erase()
        sys.stdout.write(text + "\n" + ("" if self._on_terminal() else "\n"))
        sys.stdout.flush()
        self._drawn_lines = text.count("\n") + 1 if self._on_terminal() else 0

    def _erase(self) -> None:
        if self._drawn_lines:  # up to the table's first line, then clear to the end
            sys.stdout.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._drawn_lines = 0

    def _on_terminal(self) -> bool:
        return sys.stdout.isatty() if self._tty is None else self._tty


def live_table(trials: list, metric: str, mode: str, params: list[str],
               finished_before: dict[str, list[dict]] | None = None) -> pd.DataFrame:
    """Ray's trials as rows of the trials table (the columns compact_table reads), in the order
    Ray created them; a trial Ray has ended gets the state the searcher told the study.
    `finished_before`: the result rows of trials that finished after Tune's saved state (see
    the module docstring), shown as they say where Ray's own record is older."""
    default_epochs = TrialConfig.model_fields["epochs"].default
    rows = []
    for trial in sorted(trials, key=_creation_number):
        result = trial.last_result or {}
        planned = int(trial.config.get("epochs", default_epochs))
        best = (trial.metric_analysis.get(metric) or {}).get(mode)  # Ray keeps "max", "min"
        saved = (finished_before or {}).get(trial.trial_id)
        if saved and int(saved[-1].get("epoch") or 0) > int(result.get("epoch") or 0):
            result, best = saved[-1], best_score(saved, metric, mode)
        rows.append({
            "trial_id": trial.trial_id,
            "state": _study_state(trial.status, result, planned),
            DIVERGED: bool(result.get(DIVERGED)),
            "epochs_run": int(result.get("epoch") or 0),
            "planned_epochs": planned,
            f"best_{metric}": best,
            **{f"config/{name}": trial.config.get(name) for name in params},
        })
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "state", DIVERGED,
                                                        "epochs_run", "planned_epochs",
                                                        f"best_{metric}"])


def _creation_number(trial) -> int:
    """The trial's place in the order Ray's searcher created it (its experiment tag begins
    with it: `3_lr=0.01,...`); a restored sweep lists its unfinished trials first, and the
    table keeps its rows where they were."""
    number = (trial.experiment_tag or "").partition("_")[0]
    return int(number) if number.isdigit() else 0


def _study_state(status: str, result: dict, planned: int) -> str:
    """Ray's status in the words of the study (search/searcher.py tells it so)."""
    if status == "TERMINATED":
        return "COMPLETE" if int(result.get("epoch") or 0) >= planned and not result.get(
            DIVERGED) else "PRUNED"
    return {"ERROR": "FAIL"}.get(status, status)


def _live_rows(table: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Every trial while they fit in LIVE_ROWS; past that the running and pending ones, then
    the best of the others."""
    if len(table) <= LIVE_ROWS:
        return table
    active = table["state"].isin(["RUNNING", "PENDING", "PAUSED"])
    others = table[~active].sort_values(f"best_{metric}", ascending=mode == "min",
                                        na_position="last")
    return pd.concat([table[active], others]).head(LIVE_ROWS)
