"""The sweep's pictures, drawn by `optuna.visualization.matplotlib` from the sweep's study.

Each is Optuna's own plot of the study the searcher wrote, saved as one PNG:

    optimization_history.png  plot_optimization_history: each complete trial's value and the
                              best so far
    intermediate_values.png   plot_intermediate_values: the metric per epoch of every trial,
                              stopped ones included (ASHA's curves); carsweep adds ASHA's rungs
                              as dotted lines
    slice.png                 plot_slice: the value against each searched parameter
    parallel_coordinate.png   plot_parallel_coordinate: every parameter of each complete trial
    importance.png            plot_param_importances: PED-ANOVA (analysis/importance.py)

No sweep plot is drawn by hand any more: Optuna has one for each. Its plots of values
(history, slice, parallel coordinates, importances) read the COMPLETE trials, as its importance
does; the intermediate values read every trial. A plot with nothing to show (no complete trial
yet, a single parameter for parallel coordinates) is not drawn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import optuna.visualization.matplotlib as optuna_plots
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from carsweep.analysis.importance import importance_evaluator
from carsweep.analysis.plots import DPI, plt
from carsweep.config.files import (
    CURVES_PLOT,
    HISTORY_PLOT,
    IMPORTANCE_PLOT,
    PARALLEL_PLOT,
    SLICE_PLOT,
)

FIGURE_SIZE = (8.0, 5.0)


def sweep_plots(study: optuna.Study, folder: Path, *, rungs: list[int],
                importances: dict[str, float]) -> list[Path]:
    """Draw every sweep plot that has something to show into `folder`; the paths drawn.

    `rungs`: the epochs where ASHA may stop a trial (dotted on the intermediate values);
    `importances`: the ones the report states (no plot without them)."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    searched = {name for trial in study.get_trials(deepcopy=False) for name in trial.params}
    plans: list[tuple[str, bool, Callable[[], object]]] = [
        (HISTORY_PLOT, complete > 0,
         lambda: optuna_plots.plot_optimization_history(study)),
        (CURVES_PLOT,
         any(trial.intermediate_values for trial in study.get_trials(deepcopy=False)),
         lambda: _curves(optuna_plots.plot_intermediate_values(study), study, rungs)),
        (SLICE_PLOT, complete > 0 and bool(searched),
         lambda: optuna_plots.plot_slice(study)),
        (PARALLEL_PLOT, complete > 0 and len(searched) > 1,
         lambda: optuna_plots.plot_parallel_coordinate(study)),
        (IMPORTANCE_PLOT, bool(importances),
         lambda: optuna_plots.plot_param_importances(
             study, evaluator=importance_evaluator(complete))),
    ]
    drawn = []
    for name, worth_drawing, draw in plans:
        if worth_drawing:
            drawn.append(_saved(draw, folder / name))
    return drawn


def _saved(draw: Callable[[], object], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
        axes = draw()
    panels = list(axes.flat) if hasattr(axes, "flat") else [axes]  # plot_slice: per parameter
    figure = panels[0].figure
    # Room for each panel and Optuna's colour bar beside them.
    figure.set_size_inches(max(FIGURE_SIZE[0], 4.0 * len(panels) + 2.0), FIGURE_SIZE[1])
    # Not tight_layout: Optuna's colour bars are axes it cannot place; trimmed on saving.
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def _curves(axes: plt.Axes, study: optuna.Study, rungs: list[int]) -> plt.Axes:
    """Optuna's intermediate values, named by the metric, with ASHA's rungs dotted; without
    its legend of one line per trial, which outgrows the picture past a dozen trials."""
    for rung in rungs:
        axes.axvline(rung, color="grey", linestyle=":", linewidth=1)
    if rungs:
        axes.set_xlabel("epoch (dotted: ASHA's rungs, where it stops the weaker trials)")
    axes.set_ylabel(study.metric_names[0] if study.metric_names else "value")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    if axes.get_legend() is not None:
        axes.get_legend().remove()
    return axes
