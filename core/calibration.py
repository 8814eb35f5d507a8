"""Calibration maps and operating points, fitted on validation predictions.

A map acts on the logit z = log(p / (1 - p)) of the model's softmax P(tumour) (for two classes,
z is the difference of the two logits) and returns sigmoid(a·z + b):

- ``temperature`` (Guo et al. 2017): b = 0, a = 1/T. One parameter; it sharpens or softens but
  cannot move the decision point, so it cannot undo the prior shift of a class-weighted loss.
- ``platt`` (Platt 1999): a and b free, i.e. a one-feature logistic regression on z.
- ``identity``: a = 1, b = 0 (checkpoints written before calibration existed).

Both are fitted by minimising the binary log-loss with scipy. ``cross_fitted_probs`` scores a
method honestly on one split: fit on half the patients, apply to the other half, and swap.
The operating point is the threshold of maximum balanced accuracy (Youden's J), and
``core.metrics.threshold_for_sensitivity`` gives the "sensitivity ≥ X" rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special
from sklearn.metrics import roc_curve

METHODS = ("identity", "temperature", "platt")
_EPS = 1e-7


@dataclass(frozen=True)
class Calibration:
    method: str = "identity"
    a: float = 1.0
    b: float = 0.0

    def apply(self, prob) -> np.ndarray:
        """Calibrated P(tumour) for raw softmax P(tumour)."""
        return special.expit(self.a * logit(prob) + self.b)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration:
        return cls(**data) if data else cls()


def logit(prob) -> np.ndarray:
    return special.logit(np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS))


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
    z = logit(prob)
    start = np.array([1.0, 0.0] if method == "platt" else [1.0])
    result = optimize.minimize(_log_loss, start, args=(z, y), method="L-BFGS-B")
    a = float(result.x[0])
    b = float(result.x[1]) if method == "platt" else 0.0
    return Calibration(method, a, b)


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
    y = np.asarray(y).astype(int)
    if np.unique(y).size < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, prob)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))  # roc_curve's first threshold is inf
