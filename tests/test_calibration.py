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
    guarded_calibration,
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


def test_the_guard_keeps_a_plausible_platt_fit_unchanged():
    y, raw, _ = shifted_model()
    chosen, note = guarded_calibration(y, raw, "platt")
    assert chosen == fit_calibration(y, raw, "platt") and note == ""


def test_near_constant_validation_gets_temperature_not_a_step_function():
    """A 2-epoch demo run: 107 validation patches with raw P 0.083-0.087 got Platt a = 81.6,
    b = 194.7, turning them into 0.51-0.92 (issue 27, item 4)."""
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.25).astype(int)
    raw = 0.083 + 0.004 * rng.random(400) + 0.002 * y  # barely separates the classes
    platt = fit_calibration(y, raw, "platt")
    assert platt.a > 10  # the fit the guard refuses
    chosen, note = guarded_calibration(y, raw, "platt")
    assert chosen.method == "temperature" and 0.1 <= chosen.a <= 10
    assert note.startswith("temperature instead of platt: platt's fit a=")
    calibrated = chosen.apply(raw)
    assert calibrated.max() - calibrated.min() < 0.05  # no step from 0.5 to 0.9


def test_too_few_validation_patches_of_a_class_keep_the_identity_and_say_so():
    y, raw, _ = shifted_model(n=4000)
    few = np.concatenate([np.flatnonzero(y == 0)[:500], np.flatnonzero(y == 1)[:12]])
    chosen, note = guarded_calibration(y[few], raw[few], "platt")
    assert chosen == Calibration()
    assert note == (
        "identity instead of platt: validation has 12 tumour and 500 normal patches "
        "(a map needs 20 of each)"
    )


def test_the_card_carries_the_guards_reason_and_the_conformal_quantiles():
    from core.calibration import fit_operating_point
    from core.checkpoints import ModelCard

    y, raw, _ = shifted_model()
    fields = fit_operating_point(y, raw, "platt").card_fields()
    assert fields["calibration_note"] == "" and fields["conformal"]["n_valid"] == y.size
    card = ModelCard.from_dict({**ModelCard.for_model("hcd_cnn").to_dict(), **fields})
    assert card.conformal["quantiles"].keys() == {"0.05", "0.1", "0.2"}
    older = ModelCard.for_model("hcd_cnn").to_dict()
    del older["conformal"], older["calibration_note"]  # a card written before them
    assert ModelCard.from_dict(older).conformal == {}


def test_conformal_coverage_on_exchangeable_patches_is_near_its_target():
    from core.conformal import coverage, fit_conformal

    y, raw, patients = shifted_model(n=8000, seed=5)
    calibrated = fit_calibration(y, raw, "platt").apply(raw)
    fitted = fit_conformal(y[:3000], calibrated[:3000])
    result = coverage(y[3000:], calibrated[3000:], fitted, patients[3000:])
    for key, row in result.items():
        assert row["unit"] == "patch" and row["target"] == pytest.approx(1 - float(key))
        assert abs(row["coverage"] - row["target"]) < 0.02
        assert sum(row["sets"].values()) == pytest.approx(1.0)
        assert row["patient_mean_coverage"] is not None
    assert coverage(y, raw, {}) is None
