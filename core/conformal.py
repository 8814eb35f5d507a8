"""Split-conformal prediction sets for P(tumour), fitted on validation after training and
carried by the model card (``conformal``), beside the threshold.

The score of a patch is 1 − P(its true class) (LAC, Sadinle, Lei & Wasserman 2019). With the
n validation scores, q̂(α) is the ⌈(n + 1)(1 − α)⌉-th smallest (1 when that exceeds n), and a
patch's set holds each class c with 1 − P(c) ≤ q̂: {tumour}, {normal}, both (the model cannot
tell at this error rate) or empty (neither class is likely enough). On patches exchangeable
with the validation ones, the set holds the true class with probability ≥ 1 − α: coverage is
marginal, over patches, so it is measured per patch (and averaged per patient beside it).

The probabilities are the card's calibrated ones. The sets match MAPIE 1.6's
``SplitConformalClassifier(conformity_score="lac", prefit=True)`` exactly, order statistic and
1e-8 tolerance included (tests/fixtures/stats). MAPIE itself is not used: it needs a fitted
scikit-learn estimator (a stand-in that returns stored probabilities) and keeps q̂ on a private
member, while the card needs only q̂ and the rule above is three lines.
"""

from __future__ import annotations

import math

import numpy as np

ALPHAS = (0.05, 0.1, 0.2)  # error rates whose q̂ a card keeps
DEFAULT_ALPHA = 0.1
SCORE = "lac"
TOLERANCE = 1e-8  # MAPIE's: a class whose score is within it of q̂ is in the set


def fit_conformal(y, prob, alphas=ALPHAS) -> dict:
    """The card's ``conformal`` field from validation labels and calibrated P(tumour):
    ``{"score": "lac", "n_valid": n, "quantiles": {"0.1": q̂, ...}}``."""
    y = np.asarray(y).astype(int)
    scores = np.sort(1 - _class_probs(prob)[np.arange(y.size), y])
    quantiles = {}
    for alpha in alphas:
        k = math.ceil((scores.size + 1) * (1 - alpha))
        quantiles[f"{alpha:g}"] = float(scores[k - 1]) if k <= scores.size else 1.0
    return {"score": SCORE, "n_valid": int(scores.size), "quantiles": quantiles}


def prediction_sets(prob, quantile: float) -> np.ndarray:
    """N × 2 booleans: is normal (column 0) / tumour (column 1) in each patch's set."""
    return (1 - _class_probs(prob)) - quantile <= TOLERANCE


def coverage(y, prob, conformal: dict, groups=None) -> dict | None:
    """Per error rate kept by the card, on labelled patches: the share of patches whose set
    holds the true label (unit: patch), its mean over patients where they are known, and how
    often each kind of set occurs. None for a card without conformal quantiles."""
    if not conformal:
        return None
    y = np.asarray(y).astype(int)
    out = {}
    for key, quantile in conformal["quantiles"].items():
        sets = prediction_sets(prob, quantile)
        covered = sets[np.arange(y.size), y]
        size = sets.sum(axis=1)
        out[key] = {
            "alpha": float(key),
            "target": 1 - float(key),
            "coverage": float(covered.mean()) if y.size else None,
            "unit": "patch",
            "patient_mean_coverage": _patient_mean(covered, groups),
            "sets": {
                "tumour": float(np.mean(sets[:, 1] & ~sets[:, 0])),
                "normal": float(np.mean(sets[:, 0] & ~sets[:, 1])),
                "both": float(np.mean(size == 2)),
                "empty": float(np.mean(size == 0)),
            },
            "quantile": quantile,
            "n_valid": conformal["n_valid"],
        }
    return out


def _class_probs(prob) -> np.ndarray:
    prob = np.asarray(prob, dtype=np.float64)
    return np.column_stack([1 - prob, prob])  # as MAPIE's predict_proba stand-in gives them


def _patient_mean(covered: np.ndarray, groups) -> float | None:
    if groups is None or not covered.size:
        return None
    import pandas as pd

    return float(pd.Series(covered).groupby(np.asarray(groups)).mean().mean())
