"""How a trials table reads on a console: one compact table, at most WIDTH characters wide.

The same table for every console view of a sweep: `carsweep status`, the live table a sweep
redraws (search/monitor.py builds its rows from Ray's trials under the trials table's column
names) and the sweep's final summary. Columns: the trial, its state in the study's words
(COMPLETE, PRUNED, DIVERGED, FAIL, RUNNING; PENDING before Ray starts it), epochs run of
planned, the best value of the metric so far, then the searched parameters (by field name),
as many as fit; the ones left out are named under the table.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from carsweep.config.sweep import DIVERGED

WIDTH = 110
GAP = "  "
VALUE_CHARS = 12  # a longer parameter value (an augmentation list) is cut to this, with '…'
# The metrics that are shares of images: every view shows them as percentages, as the
# trainable's epoch lines do (a sweep's and a test's).
PERCENT_METRICS = frozenset({"train_acc", "val_top1", "val_top5", "top1", "top5",
                             "mean_per_class_accuracy"})


def compact_table(table: pd.DataFrame, metric: str, params: list[str],
                  width: int = WIDTH) -> str:
    """The table as text: header, one line per row (in the table's order), and a last line
    naming the parameters that did not fit, if any."""
    columns = {"trial": table["trial_id"].astype(str),
               "state": state_words(table),
               "epoch": [f"{int(run)}/{int(planned)}" for run, planned
                         in zip(table["epochs_run"], table["planned_epochs"], strict=True)],
               f"best {metric}": table[f"best_{metric}"].map(
                   lambda value: metric_text(metric, value))}
    shown, left_out = dict(columns), []
    for name in params:
        values = table.get(f"config/{name}", pd.Series([None] * len(table), index=table.index))
        candidate = {**shown, name: values.map(_value)}
        if _width(candidate) <= width:
            shown = candidate
        else:
            left_out.append(name)
    lines = _lines(shown)
    if left_out:
        lines.append(f"(not shown: {', '.join(left_out)})")
    return "\n".join(lines)


def state_words(table: pd.DataFrame) -> pd.Series:
    """The study's state of each row, DIVERGED for a trial that diverged (it is PRUNED)."""
    states = table["state"].astype(str)
    if DIVERGED in table:
        states = states.where(~table[DIVERGED].fillna(False).astype(bool), "DIVERGED")
    return states


STATE_ORDER = ["COMPLETE", "PRUNED", "DIVERGED", "FAIL", "RUNNING", "PAUSED", "PENDING"]


def state_counts(table: pd.DataFrame, total: int | None = None) -> str:
    """`6 of 8 trials: 3 complete, 2 pruned, 1 running`: what the trials have come to."""
    counts = state_words(table).value_counts()
    order = [s for s in STATE_ORDER if s in counts] + [s for s in counts.index
                                                       if s not in STATE_ORDER]
    parts = [f"{counts[state]} {state.lower()}" for state in order]
    of = f" of {total}" if total is not None else ""
    return f"{len(table)}{of} trial{'s' if (total or len(table)) != 1 else ''}" + (
        f": {', '.join(parts)}" if parts else "")


def _lines(columns: dict[str, Any]) -> list[str]:
    texts = {name: [name, *map(str, values)] for name, values in columns.items()}
    widths = {name: max(map(len, cells)) for name, cells in texts.items()}
    rows = zip(*texts.values(), strict=True)
    return [GAP.join(cell.ljust(widths[name]) for name, cell in zip(texts, row, strict=True)
                     ).rstrip() for row in rows]


def _width(columns: dict[str, Any]) -> int:
    return len(max(_lines(columns), key=len))


def metric_text(metric: str, value: Any) -> str:
    """`93.75%` for a share of images (val_top1), `0.4321` for any other metric (val_loss),
    `-` for none yet."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.2%}" if metric in PERCENT_METRICS else f"{float(value):.4g}"


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "-"  # a conditional parameter this trial did not use
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"
