"""core.calibration: temperature vs Platt on a class-weighted-like (shifted) model, the
cross-fitted view, the operating point, and the identity map of older checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from core.calibration import (
    Calibration,
    cross_fitted_probs,
    fit_calibration,
    logit,
    max_balanced_accuracy_threshold,
)
from core.metrics import expected_calibration_error


def shifted_model(n=4000, seed=0):
    """Labels from a calibrated logit z; the 'model' reports 2z + 1.2, as a class-weighted loss
    over-calls the minority class: sharper and shifted."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    raw = 1 / (1 + np.exp(-(2 * z + 1.2)))
    return y, raw, rng.integers(0, 40, n)


def test_platt_undoes_a_shift_that_temperature_cannot():
    y, raw, _ = shifted_model()
    platt = fit_calibration(y, raw, "platt")
    temperature = fit_calibration(y, raw, "temperature")
    assert platt.a == pytest.approx(0.5, abs=0.05) and platt.b == pytest.approx(-0.6, abs=0.1)
    assert temperature.b == 0.0
    assert expected_calibration_error(y, platt.apply(raw)) < 0.02
    assert expected_calibration_error(y, raw) > expected_calibration_error(y, platt.apply(raw))
    assert expected_calibration_error(y, temperature.apply(raw)) > 0.03


def test_cross_fitting_maps_each_patient_half_with_the_other_halfs_fit():
    y, raw, patients = shifted_model()
    crossed = cross_fitted_probs(y, raw, patients, "platt")
    assert crossed.shape == raw.shape and not np.allclose(crossed, raw)
    assert expected_calibration_error(y, crossed) < 0.03


def test_identity_for_older_checkpoints_and_single_class_data():
    prob = np.array([0.1, 0.5, 0.9])
    assert np.allclose(Calibration.from_dict(None).apply(prob), prob)
    assert fit_calibration([1, 1, 1], prob, "platt") == Calibration()
    card_value = fit_calibration(*shifted_model()[:2], "platt").to_dict()
    assert Calibration.from_dict(card_value).method == "platt"
    with pytest.raises(ValueError, match="unknown calibration"):
        fit_calibration([0, 1], [0.2, 0.8], "isotonic")


def test_logit_is_finite_at_zero_and_one():
    assert np.isfinite(logit([0.0, 1.0])).all()


def test_threshold_maximises_balanced_accuracy():
    y, raw, _ = shifted_model()
    t = max_balanced_accuracy_threshold(y, raw)
    best = balanced_accuracy_score(y, raw >= t)
    for other in np.linspace(0.05, 0.95, 19):
        assert best >= balanced_accuracy_score(y, raw >= other) - 1e-12
    assert max_balanced_accuracy_threshold([1, 1], [0.2, 0.3]) == 0.5
