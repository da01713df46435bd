"""Calibration: ECE of constructed cases is what its definition says, and temperature scaling
finds the temperature a constructed over- or under-confident model needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carsweep.analysis.calibration import (
    CALIBRATION_BINS,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability,
    scaled,
)

CLASSES = 10


def confident(confidence: float, correct: int, images: int) -> tuple[np.ndarray, np.ndarray]:
    """`images` predictions of class 0 with top probability `confidence` (the rest spread
    evenly), `correct` of them right (label 0), the others labelled 1."""
    rest = (1 - confidence) / (CLASSES - 1)
    probs = np.full((images, CLASSES), rest)
    probs[:, 0] = confidence
    labels = np.where(np.arange(images) < correct, 0, 1)
    return probs, labels


def joined(*cases: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([c[0] for c in cases]), np.concatenate([c[1] for c in cases])


def test_a_perfectly_calibrated_model_has_no_calibration_error():
    # In each bin above 1/C: 30 images at the bin's centre confidence (2b+1)/30, exactly that
    # share of them right.
    cases = [confident((2 * b + 1) / 30, 2 * b + 1, 30) for b in range(2, CALIBRATION_BINS)]
    probs, labels = joined(*cases)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    table = reliability(probs, labels)
    assert table["images"].tolist() == [0, 0] + [30] * (CALIBRATION_BINS - 2)
    np.testing.assert_allclose(table["accuracy"][2:], table["confidence"][2:])


def test_an_over_confident_model_has_the_gap_as_its_error():
    probs, labels = confident(0.9, 60, 100)  # says 90 %, right 60 % of the time
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)
    # Half at 95 % but right half the time, half at 55 % and right 55 %: 0.5 * 0.45 + 0.
    mixed = joined(confident(0.95, 50, 100), confident(0.55, 55, 100))
    assert expected_calibration_error(*mixed) == pytest.approx(0.225)
    table = reliability(*mixed)
    assert table.loc[table["images"] > 0, "upper"].tolist() == pytest.approx([9 / 15, 1.0])


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    probs, labels = confident(9 / 15, 9, 15)  # (b-1)/M < c <= b/M: bin 9 of 15
    table = reliability(probs, labels)
    assert table["images"].tolist()[8] == 15


def drawn(seed: int = 0, images: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """True logits (N, C) and labels drawn from their softmax: a calibrated model's outputs."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(images, CLASSES, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator)[:, 0]
    return logits.numpy(), labels.numpy()


@pytest.mark.parametrize("sharpness", [3.0, 0.5])  # over-confident, under-confident
def test_temperature_scaling_undoes_a_sharpened_model(sharpness):
    logits, labels = drawn()
    model = sharpness * logits  # argmax unchanged, confidence wrong
    temperature = fit_temperature(model, labels)
    assert temperature == pytest.approx(sharpness, rel=0.1)
    before = negative_log_likelihood(model, labels)
    after = negative_log_likelihood(model, labels, temperature)
    assert after < before
    assert after <= negative_log_likelihood(model, labels, sharpness) + 1e-9  # NLL's minimum
    probs = torch.softmax(torch.as_tensor(model), dim=1).numpy()
    calibrated = scaled(probs, temperature)
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()
    assert (expected_calibration_error(calibrated, labels)
            < expected_calibration_error(probs, labels) / 2)


def test_scaled_probabilities_are_the_softmax_of_the_divided_logits():
    logits, _ = drawn(images=50)
    probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    expected = torch.softmax(torch.as_tensor(logits) / 1.7, dim=1).numpy()
    np.testing.assert_allclose(scaled(probs, 1.7), expected, atol=1e-12)
    np.testing.assert_allclose(scaled(probs, 1.0), probs, atol=1e-12)


def test_no_temperature_is_fitted_where_every_image_is_predicted_right():
    """The NLL then falls without end as T shrinks: a fit would only sharpen the model to the
    range's bound (the demo's analysis shipped T = 0.05, every answer at 100 %)."""
    logits, labels = drawn(images=200)
    right = logits.argmax(axis=1)
    assert fit_temperature(logits, right) is None
    assert (negative_log_likelihood(logits, right, 0.1)
            < negative_log_likelihood(logits, right, 0.5)
            < negative_log_likelihood(logits, right, 1.0))  # no minimum above 0
    one_wrong = right.copy()
    one_wrong[0] = (right[0] + 1) % CLASSES
    temperature = fit_temperature(logits, one_wrong)  # one mistake bounds it below
    assert temperature is not None
    assert 0.05 < temperature < 1.0
