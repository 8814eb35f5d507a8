"""Calibration maps and operating points, fitted on validation predictions.

A map acts on the logit z = log(p / (1 - p)) of the model's softmax P(tumour) (for two classes,
z is the difference of the two logits) and returns sigmoid(a·z + b):

- ``temperature`` (Guo et al. 2017): b = 0, a = 1/T. One parameter; it sharpens or softens but
  cannot move the decision point, so it cannot undo the prior shift of a class-weighted loss.
- ``platt`` (Platt 1999): a and b free, i.e. a one-feature logistic regression on z.
- ``identity``: a = 1, b = 0 (checkpoints written before calibration existed).

Both are fitted by minimising the binary log-loss with scipy (imported when fitting: the
torch-free TrainConfig imports ``METHODS`` from here). After training, ``guarded_calibration``
guards the fit: a small or one-sided validation split keeps the identity, and an implausible
Platt fit (a step function or a flat line, as near-constant validation probabilities give)
falls back to temperature scaling, or to the identity; the card says which and why. ``cross_fitted_probs`` scores a
method honestly on one split: fit on half the patients, apply to the other half, and swap.
The operating point is the threshold of maximum balanced accuracy (Youden's J), and
``core.metrics.threshold_for_sensitivity`` gives the "sensitivity ≥ X" rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

METHODS = ("identity", "temperature", "platt")
_EPS = 1e-7


@dataclass(frozen=True)
class Calibration:
    method: str = "identity"
    a: float = 1.0
    b: float = 0.0

    def apply(self, prob) -> np.ndarray:
        """Calibrated P(tumour) for raw softmax P(tumour)."""
        return _sigmoid(self.a * logit(prob) + self.b)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration:
        return cls(**data) if data else cls()


def logit(prob) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(s: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -s))  # 1 / (1 + e^-s) without overflow


def _log_loss(params: np.ndarray, z: np.ndarray, y: np.ndarray) -> float:
    a, b = params[0], params[1] if params.size > 1 else 0.0
    s = a * z + b
    # -[y log σ(s) + (1-y) log(1-σ(s))] = logaddexp(0, s) - y·s, stable for large |s|
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_calibration(y, prob, method: str = "platt") -> Calibration:
    """Fit ``method`` on labels ``y`` and raw probabilities ``prob`` (needs both classes)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration {method!r}; use one of {', '.join(METHODS)}")
    y = np.asarray(y, dtype=np.float64)
    if method == "identity" or np.unique(y).size < 2:
        return Calibration()
    from scipy import optimize

    z = logit(prob)
    start = np.array([1.0, 0.0] if method == "platt" else [1.0])
    result = optimize.minimize(_log_loss, start, args=(z, y), method="L-BFGS-B")
    a = float(result.x[0])
    b = float(result.x[1]) if method == "platt" else 0.0
    if not (a > 0 and np.isfinite(b)):  # a <= 0 would reverse the ranking (a useless model)
        return Calibration()
    return Calibration(method, a, b)


# The guard of the map written into a card. A plausible slope a (= 1/T) leaves the ranking's
# spread within a factor of 10 either way; |b| > 10 multiplies the odds by more than 20,000.
MIN_PER_CLASS = 20  # validation patches of each class below which no map is fitted
SLOPE_RANGE = (0.1, 10.0)
MAX_INTERCEPT = 10.0


def guarded_calibration(y, prob, method: str = "platt") -> tuple[Calibration, str]:
    """The map to keep, and why it is not ``method`` when it is not ("" when it is): the
    identity when validation has fewer than MIN_PER_CLASS patches of either class; temperature
    scaling when Platt's fit is implausible (a outside SLOPE_RANGE or |b| > MAX_INTERCEPT); the
    identity when that is implausible too. A 2-epoch demo run got Platt a = 81.6, b = 194.7,
    which turned raw probabilities of 0.083-0.087 into 0.51-0.92."""
    y = np.asarray(y).astype(int)
    if method == "identity":
        return Calibration(), ""
    counts = {"tumour": int(np.sum(y == 1)), "normal": int(np.sum(y == 0))}
    if min(counts.values()) < MIN_PER_CLASS:
        return Calibration(), (
            f"identity instead of {method}: validation has {counts['tumour']} tumour and "
            f"{counts['normal']} normal patches (a map needs {MIN_PER_CLASS} of each)"
        )
    fitted = fit_calibration(y, prob, method)
    if _plausible(fitted):
        return fitted, ""
    why = f"{method}'s fit a={fitted.a:.3g}, b={fitted.b:.3g} is implausible"
    if method == "platt":
        fallback = fit_calibration(y, prob, "temperature")
        if _plausible(fallback):
            return fallback, f"temperature instead of platt: {why}"
    return Calibration(), f"identity instead of {method}: {why}"


def _plausible(calibration: Calibration) -> bool:
    low, high = SLOPE_RANGE
    return (
        calibration.method != "identity"
        and low <= calibration.a <= high
        and abs(calibration.b) <= MAX_INTERCEPT
    )


def cross_fitted_probs(y, prob, groups, method: str, seed: int = 0) -> np.ndarray:
    """Calibrated probabilities where each half of the ``groups`` (patients; patches if none)
    is mapped by a calibration fitted on the other half: an out-of-sample view of the method."""
    y, prob = np.asarray(y), np.asarray(prob, dtype=np.float64)
    groups = np.arange(y.size) if groups is None else np.asarray(groups)
    unique = np.unique(groups)
    half = np.isin(groups, np.random.default_rng(seed).permutation(unique)[: unique.size // 2])
    out = np.empty_like(prob)
    for fit_on, apply_to in ((half, ~half), (~half, half)):
        out[apply_to] = fit_calibration(y[fit_on], prob[fit_on], method).apply(prob[apply_to])
    return out


def max_balanced_accuracy_threshold(y, prob) -> float:
    """The threshold (``prob >= t`` is tumour) of maximum balanced accuracy = (TPR + TNR) / 2;
    0.5 when only one class is present."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y).astype(int)
    if np.unique(y).size < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, prob)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))  # roc_curve's first threshold is inf


SENSITIVITY_RULES = (0.90, 0.95)  # "sensitivity ≥ X" operating points kept in the card


@dataclass(frozen=True)
class Fitted:
    """What training learns on validation after the last epoch: the card's fields and the
    figures the run's status reports."""

    calibration: Calibration
    threshold: float
    operating_points: dict
    ece_raw: float
    ece: float
    calibration_note: str = ""  # why the map is not the one asked for (guarded_calibration)
    conformal: dict = field(default_factory=dict)  # core.conformal.fit_conformal

    def card_fields(self) -> dict:
        return {
            "calibration": self.calibration.to_dict(),
            "calibration_note": self.calibration_note,
            "threshold": self.threshold,
            "operating_points": self.operating_points,
            "conformal": self.conformal,
        }

    def apply_to(self, card):
        """``card`` (a ModelCard) carrying this map, threshold, operating points and conformal
        quantiles, and the validation ECEs in its metrics: what training and `calibrate` write."""
        metrics = {**card.metrics, "valid_ece_raw": self.ece_raw, "valid_ece": self.ece}
        return replace(card, metrics=metrics, **self.card_fields())


def fit_operating_point(y, prob, method: str = "platt") -> Fitted:
    """Calibration map (``method``, guarded: ``guarded_calibration``) and thresholds fitted on
    validation labels and raw softmax probabilities: the maximum-balanced-accuracy threshold is
    the default, and the highest threshold reaching each sensitivity in SENSITIVITY_RULES is
    kept beside it; the split-conformal quantiles of the calibrated probabilities
    (``core.conformal``) go with them."""
    from core.conformal import fit_conformal
    from core.metrics import expected_calibration_error, threshold_for_sensitivity

    y = np.asarray(y).astype(int)
    calibration, note = guarded_calibration(y, prob, method)
    calibrated = calibration.apply(prob)
    both = np.unique(y).size == 2
    points = {"max_balanced_accuracy": max_balanced_accuracy_threshold(y, calibrated)}
    for target in SENSITIVITY_RULES if both else ():
        points[f"sensitivity>={target:.2f}"] = threshold_for_sensitivity(y, calibrated, target)[
            "threshold"
        ]
    return Fitted(
        calibration=calibration,
        threshold=points["max_balanced_accuracy"],
        operating_points=points,
        ece_raw=expected_calibration_error(y, prob),
        ece=expected_calibration_error(y, calibrated),
        calibration_note=note,
        conformal=fit_conformal(y, calibrated) if both else {},
    )
