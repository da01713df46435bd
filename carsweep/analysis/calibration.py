"""Calibration: how far a model's confidence is from its accuracy, and one temperature to fix it.

Both from Guo et al. 2017, "On Calibration of Modern Neural Networks"
(https://arxiv.org/abs/1706.04599):

- `expected_calibration_error` (ECE): the images binned by confidence (their top probability)
  into CALIBRATION_BINS equal-width bins, (b-1)/M < confidence <= b/M, and each bin's gap
  |accuracy - mean confidence| weighted by its share of the images. `reliability` is that
  table, which the reliability diagram draws.
- `fit_temperature` (temperature scaling): one T > 0 that divides every logit, chosen to
  minimise the negative log-likelihood of held-out images (L-BFGS on log T, so T stays
  positive, clamped to TEMPERATURE_RANGE). It changes no prediction, only how sure the model
  says it is: T > 1 softens an over-confident model. Where every held-out image's label has
  the top logit, the NLL falls without end as T shrinks (each image's probability goes to 1):
  there is no minimum, and a fit would only sharpen the model to the range's bound, so none is
  made (`fit_temperature` returns None).

Probabilities go back to logits with `log_probabilities` (log p = z - logsumexp z, and the
softmax is shift-invariant, so softmax(log p / T) = softmax(z / T)). Pure functions of numpy
arrays: (N, C) probabilities or logits, (N,) integer labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

CALIBRATION_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
                ) -> pd.DataFrame:
    """Per confidence bin: lower, upper, images, confidence (mean top probability) and
    accuracy (NaN in an empty bin)."""
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (N,)
    images = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / images
        accuracy = np.bincount(index, weights=correct, minlength=bins) / images
    edges = np.arange(bins + 1) / bins
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "images": images,
                         "confidence": mean_confidence, "accuracy": accuracy})


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """Sum over bins of (images in bin / images) * |accuracy - mean confidence|."""
    table = reliability(probs, labels, bins)
    filled = table[table["images"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["images"] * gaps).sum() / table["images"].sum())


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """log p, usable as logits (a probability that underflowed to 0 counts as the smallest
    positive float64)."""
    return np.log(np.clip(probs, np.finfo(np.float64).tiny, None))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[label]."""
    z = torch.tensor(np.asarray(logits), dtype=torch.float64)  # a copy: inputs may be read-only
    return float(F.cross_entropy(z / temperature, torch.tensor(np.asarray(labels))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The T that minimises the mean NLL of softmax(logits / T) on these images; None where
    every image is predicted right (no minimum: see the module docstring)."""
    z = torch.tensor(np.asarray(logits), dtype=torch.float64)  # (N, C), a copy
    y = torch.tensor(np.asarray(labels), dtype=torch.int64)
    if bool((z.argmax(dim=1) == y).all()):
        return None
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(z / log_t.exp(), y)
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    low, high = TEMPERATURE_RANGE
    return float(min(max(log_t.exp().item(), low), high))


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities a temperature gives: softmax(log p / T)."""
    z = torch.from_numpy(log_probabilities(probs)) / temperature
    return torch.softmax(z, dim=1).numpy()
