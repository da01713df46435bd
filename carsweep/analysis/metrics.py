"""Test metrics from saved predictions: pure functions of (probabilities, labels, class names).

analysis/predictions.csv holds, per test image, its path, true label, predicted label, and
the probability of every class (`p_<index>` columns), so every number in metrics.json, the
confusion matrix and the tables can be recomputed from that file alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from carsweep.analysis.calibration import (
    expected_calibration_error,
    log_probabilities,
    negative_log_likelihood,
)

PROB_PREFIX = "p_"


def predictions_table(paths: list[str], labels: np.ndarray, probs: np.ndarray,
                      classes: list[str]) -> pd.DataFrame:
    """One row per image: path, label, true_name, pred, pred_name, score, p_0..p_{C-1}."""
    labels = np.asarray(labels, dtype=int)
    pred = probs.argmax(axis=1)  # (N,)
    table = pd.DataFrame({
        "path": paths, "label": labels, "true_name": [classes[i] for i in labels],
        "pred": pred, "pred_name": [classes[i] for i in pred],
        "score": probs[np.arange(len(pred)), pred],
    })
    columns = pd.DataFrame(probs, columns=[f"{PROB_PREFIX}{i}" for i in range(probs.shape[1])])
    return pd.concat([table, columns], axis=1)


def probabilities(table: pd.DataFrame) -> np.ndarray:
    """(N, C) class probabilities from a predictions table."""
    columns = [c for c in table.columns if c.startswith(PROB_PREFIX)]
    columns.sort(key=lambda c: int(c.removeprefix(PROB_PREFIX)))
    return table[columns].to_numpy(dtype=np.float64)


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of images whose true class is among the k most probable (k capped at C)."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, k)
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(pred)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per class: images, correct, accuracy (NaN for a class with no test image), worst first."""
    images = matrix.sum(axis=1)
    correct = np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(images > 0, correct / np.maximum(images, 1), np.nan)
    table = pd.DataFrame({"label": range(len(classes)), "class_name": classes,
                          "images": images, "correct": correct, "accuracy": accuracy})
    return table.sort_values(["accuracy", "label"], na_position="last").reset_index(drop=True)


def most_confused_pairs(matrix: np.ndarray, classes: list[str], top: int = 20) -> pd.DataFrame:
    """The off-diagonal cells with the most images: true class, predicted class, count."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off)
    counts = off[true, pred]
    order = np.lexsort((pred, true, -counts))[:top]
    return pd.DataFrame({
        "true_name": [classes[i] for i in true[order]],
        "pred_name": [classes[i] for i in pred[order]],
        "count": counts[order],
        "share_of_true_class": counts[order] / matrix.sum(axis=1)[true[order]],
    })


def test_metrics(table: pd.DataFrame, num_classes: int) -> dict[str, float | int]:
    """top1, top5, mean per-class accuracy, the image count, the expected calibration error
    (15 bins) and the negative log-likelihood, from a predictions table."""
    probs = probabilities(table)
    labels = table["label"].to_numpy()
    matrix = confusion_matrix(labels, probs.argmax(axis=1), num_classes)
    images = matrix.sum(axis=1)
    present = images > 0
    return {
        "top1": top_k_accuracy(probs, labels, 1),
        "top5": top_k_accuracy(probs, labels, 5),
        "mean_per_class_accuracy": float((np.diag(matrix)[present] / images[present]).mean()),
        "test_images": int(len(table)),
        "ece": expected_calibration_error(probs, labels),
        "nll": negative_log_likelihood(log_probabilities(probs), labels),
    }


def make_of(class_name: str) -> str:
    """A car's make: the first word of its class name ("BMW M3 Coupe 2012" -> "BMW")."""
    words = class_name.split()
    return words[0] if words else class_name


def by_make(matrix: np.ndarray, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """The makes (sorted) and the (M, M) confusion counts with classes summed into makes."""
    makes = sorted({make_of(c) for c in classes})
    index = {make: i for i, make in enumerate(makes)}
    member = np.zeros((len(classes), len(makes)), dtype=np.int64)
    member[np.arange(len(classes)), [index[make_of(c)] for c in classes]] = 1
    return makes, member.T @ np.asarray(matrix, dtype=np.int64) @ member
