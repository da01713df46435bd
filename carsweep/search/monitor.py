"""What a person watches during a sweep: TensorBoard (scalars + HParams) and one console table.

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

from typing import Any

from ray.tune import Callback, CLIReporter
from ray.tune.logger import TBXLoggerCallback
from ray.tune.utils import flatten_dict

from carsweep.config.sweep import DIVERGED, DIVERGED_MESSAGE

# The console table: the sweep's metric first, then the columns worth a glance.
PROGRESS_METRICS = ("epoch", "val_top1", "val_loss", "train_loss", "images_per_s")


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
    """One console line per trial that diverged, when its last report arrives."""

    def __init__(self) -> None:
        self._told: set[str] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get(DIVERGED) and trial.trial_id not in self._told:
            self._told.add(trial.trial_id)
            print(diverged_line(str(trial), result), flush=True)


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


def progress_reporter(metric: str, parameter_names: list[str],
                      mode: str | None = None) -> CLIReporter:
    """Ray's console table, trimmed: the metric and a few columns, the searched parameters;
    finished trials sorted best first when `mode` is given.

    CLIReporter sorts only when it knows both metric and mode (the TuneConfig carries neither:
    the searcher and ASHA get them); asked to sort without them it warns on the first table
    and sorts nothing, so without `mode` no sorting is asked for."""
    columns = [metric, *(m for m in PROGRESS_METRICS if m != metric)]
    return CLIReporter(
        metric_columns=columns,
        parameter_columns=parameter_names,
        max_report_frequency=30,
        max_column_length=14,
        metric=metric if mode else None,
        mode=mode,
        sort_by_metric=mode is not None,
    )
