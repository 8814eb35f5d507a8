"""What a model says about a patch: one P(tumour) and one call, read by every page and command.

- **P(tumour)** is the model card's calibration map (``core.calibration``, fitted on validation)
  applied to the softmax's output 1: ``ModelCard.calibrated``. Cards written before calibration
  existed carry the identity map.
- **The call** is tumour when P(tumour) >= the threshold (scikit-learn's ``roc_curve`` rule).
  The threshold is the card's operating point unless the user set another one (a page's slider,
  ``--threshold``); a ``Threshold`` carries where its value came from, so every caption can say.

Captions, the Outcome filter, Compare's tables and CSV, ``evaluate``, ``explain`` and the CAM
target "predicted class" all go through ``predict_labels`` with the same threshold: two code
paths that compute "the same" call would drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.config import CLASS_NAMES

DECISION_THRESHOLD = 0.5  # what a card without an operating point (older checkpoints) means


@dataclass(frozen=True)
class Threshold:
    """A decision threshold and who chose it: "card" (learnt on validation), or the control
    that set it ("--threshold", "the Compare slider", ...)."""

    value: float
    source: str = "card"

    def describe(self) -> str:
        """ "the card's threshold 0.566" or "threshold 0.700 (--threshold)"."""
        if self.source == "card":
            return f"the card's threshold {self.value:.3f}"
        return f"threshold {self.value:.3f} ({self.source})"


def threshold_of(card, value: float | None = None, source: str = "--threshold") -> Threshold:
    """The card's threshold, or ``value`` set by ``source`` when one is given."""
    if value is None:
        return Threshold(float(card.threshold), "card")
    return Threshold(float(value), source)


def predict_labels(prob, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """1 (tumour) where P(tumour) >= ``threshold``, else 0 (normal)."""
    return (np.asarray(prob, dtype=float) >= threshold).astype(int)


def called_class(prob: float, threshold: float = DECISION_THRESHOLD) -> str:
    """The class name a P(tumour) calls: "tumour" at or above ``threshold``, else "normal"."""
    return CLASS_NAMES[int(predict_labels(prob, threshold))]


def describe_call(prob: float, threshold: float, digits: int = 3) -> str:
    """ "P(tumour) 0.834 → tumour": how captions and the CLI state one patch's call."""
    return f"P(tumour) {prob:.{digits}f} → {called_class(prob, threshold)}"
