"""The report's confusion-matrix pictures (matplotlib, Agg: no display needed), each one PNG.

The sweep's pictures are Optuna's own, drawn from the study (analysis/sweep_plots.py).

Confusion matrices are drawn three ways because 196 classes do not fit one legible picture:
the full matrix (tick labels only while they can be read), the matrix grouped by make (rows
normalised, so a make with many models is not louder), and a zoom on the classes involved in
the most confusions, with names and counts.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: analyze runs on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from carsweep.analysis.calibration import (  # noqa: E402
    expected_calibration_error,
    reliability,
    scaled,
)
from carsweep.analysis.metrics import by_make  # noqa: E402

LABELLED_CLASSES = 40  # above this, class names on the axes overlap
ZOOM_CLASSES = 20
DPI = 110


def save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def confusion_full(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Every class; row-normalised so each row reads as "where class i's images went"."""
    title = f"Confusion matrix, all {len(classes)} classes (share of each true class)"
    return _row_shared_matrix(matrix, classes, title, path)


def confusion_by_make(matrix: np.ndarray, classes: list[str], path: Path) -> Path | None:
    """Classes summed into their makes (first word of the name); row-normalised. None when
    every class is its own make (the picture would repeat the full matrix)."""
    makes, grouped = by_make(matrix, classes)
    if len(makes) == len(classes):
        return None
    return _row_shared_matrix(grouped, makes, f"Confusion matrix by make ({len(makes)} makes)",
                              path)


def _row_shared_matrix(matrix: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    """One row-normalised matrix picture; names and counts only while they stay legible."""
    side = min(14.0, 4 + 0.25 * len(labels))
    figure, axes = plt.subplots(figsize=(side + 1.5, side))
    _draw_matrix(axes, _row_share(matrix), labels if len(labels) <= LABELLED_CLASSES else None,
                 counts=matrix if len(labels) <= ZOOM_CLASSES else None)
    axes.set_title(title)
    return save(figure, path)


def most_confused_classes(matrix: np.ndarray, top: int = ZOOM_CLASSES) -> list[int]:
    """The classes with the most off-diagonal images, as true or as predicted class."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    involvement = off.sum(axis=0) + off.sum(axis=1)
    order = np.argsort(-involvement, kind="stable")
    chosen = [int(i) for i in order[:top] if involvement[i] > 0]
    return sorted(chosen) or list(range(min(top, len(matrix))))


def confusion_zoom(matrix: np.ndarray, classes: list[str], path: Path) -> Path | None:
    """The most confused classes only, with their names and image counts in the cells; None
    when there are so few classes that the full matrix already shows them so."""
    if len(classes) <= ZOOM_CLASSES:
        return None
    chosen = most_confused_classes(matrix)
    sub = matrix[np.ix_(chosen, chosen)]
    figure, axes = plt.subplots(figsize=(10, 9))
    _draw_matrix(axes, _row_share(sub), [classes[i] for i in chosen], counts=sub)
    axes.set_title(f"The {len(chosen)} most confused classes (counts; colour = share of row)")
    return save(figure, path)


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, temperature: float,
                        path: Path) -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), as tested
    and, where a temperature was fitted, with it; ECE in each title, bar width = the bin."""
    panels = [("as tested", probs)]
    if temperature != 1.0:
        panels.append((f"temperature {temperature:.2f}", scaled(probs, temperature)))
    figure, grid = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for axes, (title, shown) in zip(grid.flat, panels, strict=True):
        table = reliability(shown, labels)
        filled = table[table["images"] > 0]
        width = float(table["upper"].iloc[0] - table["lower"].iloc[0])
        axes.bar(filled["lower"], filled["accuracy"], width=width, align="edge",
                 edgecolor="black", color="C0", label="accuracy")
        axes.bar(filled["lower"], filled["confidence"] - filled["accuracy"],
                 bottom=filled["accuracy"], width=width, align="edge", fill=False, hatch="//",
                 edgecolor="C3", linewidth=0, label="gap to mean confidence")
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (top probability)")
        axes.set_ylabel("accuracy")
        axes.set_title(f"{title}: ECE {expected_calibration_error(shown, labels):.3f}")
        axes.legend(fontsize=8, loc="upper left")
    figure.suptitle(f"Reliability on the test split ({len(table)} bins, {len(labels)} images)")
    return save(figure, path)


def _row_share(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def _draw_matrix(axes: plt.Axes, shares: np.ndarray, labels: list[str] | None,
                 counts: np.ndarray | None = None) -> None:
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    axes.figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if labels is not None:
        ticks = range(len(labels))
        axes.set_xticks(ticks, labels, rotation=90, fontsize=7)
        axes.set_yticks(ticks, labels, fontsize=7)
    if counts is not None:
        for (row, column), count in np.ndenumerate(counts):
            if count:
                axes.text(column, row, str(int(count)), ha="center", va="center", fontsize=7,
                          color="white" if shares[row, column] > 0.5 else "black")
