"""Binary classification metrics for P(tumour) predictions, from scikit-learn.

Conventions: labels are 0 (normal) / 1 (tumour); ``prob`` is P(tumour); a patch is called
tumour when ``prob >= threshold`` (the same rule as ``sklearn.metrics.roc_curve``; the one
definition of a call is ``core.calls``).

What is not in scikit-learn, and how it is done here:
- AUC 95% CI: seeded percentile bootstrap over patches, or over patients (a cluster bootstrap:
  a patient's patches are resampled together) where patients are known (``bootstrap_auc_ci``).
- ECE: the bins of ``sklearn.calibration.calibration_curve`` (uniform), weighted by bin size.
- McNemar: exact two-sided binomial test on the discordant pairs (``scipy.stats.binomtest``),
  which is valid for any count (statsmodels' default); the chi-square statistic with Edwards'
  continuity correction, (|b - c| - 1)^2 / (b + c), and its p-value are reported beside it.
- Paired AUC: DeLong, DeLong & Clarke-Pearson (1988) test, computed with the midrank algorithm
  of Sun & Xu (2014); the AUCs themselves come from ``roc_auc_score``.
- With patients known, the paired tests treat each patient as a cluster: DeLong as generalised
  by Obuchowski (1997) and McNemar as by Durkalski et al. (2003) (``*_clustered``).
- Patient-level metrics: a patient is tumour when any of its patches is, scored by the max
  P(tumour) of its patches (``patient_level``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from core.calls import DECISION_THRESHOLD, predict_labels
from core.config import CLASS_NAMES


def _arrays(y, prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    prob = np.asarray(prob, dtype=float).ravel()
    if y.shape != prob.shape:
        raise ValueError(f"labels ({y.size}) and probabilities ({prob.size}) differ in length")
    return y, prob


def _has_both_classes(y: np.ndarray) -> bool:
    return np.unique(y).size == 2


def confusion(y, prob, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """2×2 counts, rows = true (normal, tumour), columns = predicted (normal, tumour)."""
    y, prob = _arrays(y, prob)
    return confusion_matrix(y, predict_labels(prob, threshold), labels=[0, 1])


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (rows with no patches stay 0)."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)


def rates_at_threshold(y, prob, threshold: float = DECISION_THRESHOLD) -> dict:
    """Sensitivity, specificity, PPV, NPV (None where the denominator is 0)."""
    (tn, fp), (fn, tp) = confusion(y, prob, threshold)

    def ratio(num, den):
        return float(num / den) if den else None

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
    }


def binary_metrics(y, prob, threshold: float = DECISION_THRESHOLD) -> dict:
    """All threshold-free and at-threshold metrics as a JSON-able dict.

    ``auc`` and ``ap`` are None when only one class is present (they are undefined there).
    """
    y, prob = _arrays(y, prob)
    pred = predict_labels(prob, threshold)
    both = _has_both_classes(y)
    out = {
        "n": int(y.size),
        "n_tumour": int(y.sum()),
        "n_normal": int((y == 0).sum()),
        "threshold": float(threshold),
        "auc": float(roc_auc_score(y, prob)) if both else None,
        "ap": float(average_precision_score(y, prob)) if both else None,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else None,
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, prob, labels=[0, 1])),
        "ece": expected_calibration_error(y, prob),
        "confusion_matrix": confusion(y, prob, threshold).tolist(),
    }
    out.update(rates_at_threshold(y, prob, threshold))
    return out


def roc(y, prob) -> dict:
    fpr, tpr, thresholds = roc_curve(*_arrays(y, prob))
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def pr(y, prob) -> dict:
    precision, recall, thresholds = precision_recall_curve(*_arrays(y, prob))
    return {"precision": precision, "recall": recall, "thresholds": thresholds}


def bootstrap_auc_ci(
    y, prob, n_boot: int = 1000, seed: int = 0, level: float = 0.95, groups=None
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the ROC AUC with a seeded generator. Resamples patches, or,
    with ``groups`` (patient of each patch), whole patients with all their patches: a cluster
    bootstrap, since patches of one patient are not independent (``ci_unit`` names the unit).

    Resamples with a single class are skipped (AUC undefined). None if ``y`` has one class
    or ``n_boot`` is 0 (no CI asked for).
    """
    y, prob = _arrays(y, prob)
    if n_boot < 1 or not _has_both_classes(y):
        return None
    rng = np.random.default_rng(seed)
    members = None if groups is None else _members(groups)
    aucs = []
    for _ in range(n_boot):
        if members is None:
            idx = rng.integers(0, y.size, y.size)
        else:
            idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        if _has_both_classes(y[idx]):
            aucs.append(roc_auc_score(y[idx], prob[idx]))
    if not aucs:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(aucs, [tail, 100 - tail])
    return float(lo), float(hi)


def format_ci(ci, digits: int = 3) -> str:
    """ "0.812–0.871" for a (low, high) interval, "n/a" when there is none."""
    if ci is None:
        return "n/a"
    lo, hi = ci
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def _bin_ids(prob: np.ndarray, n_bins: int) -> np.ndarray:
    # The same uniform bins as sklearn.calibration.calibration_curve(strategy="uniform").
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], prob)


def reliability(y, prob, n_bins: int = 10) -> dict:
    """Reliability diagram: per non-empty bin, mean predicted P(tumour), observed tumour
    fraction and patch count."""
    y, prob = _arrays(y, prob)
    frac_tumour, mean_prob = calibration_curve(y, prob, n_bins=n_bins, strategy="uniform")
    counts = np.bincount(_bin_ids(prob, n_bins), minlength=n_bins)
    return {"mean_prob": mean_prob, "frac_tumour": frac_tumour, "count": counts[counts > 0]}


def expected_calibration_error(y, prob, n_bins: int = 10) -> float:
    """ECE = sum over bins of (bin size / N) · |observed tumour fraction − mean P(tumour)|."""
    curve = reliability(y, prob, n_bins)
    weights = curve["count"] / curve["count"].sum()
    return float(np.sum(weights * np.abs(curve["frac_tumour"] - curve["mean_prob"])))


def threshold_for_sensitivity(y, prob, min_sensitivity: float) -> dict:
    """The highest threshold whose sensitivity is ≥ ``min_sensitivity`` (so specificity is
    as high as it can be there), with the sensitivity and specificity it achieves."""
    y, prob = _arrays(y, prob)
    if not _has_both_classes(y):
        raise ValueError("need both tumour and normal patches to choose a threshold")
    _, tpr, thresholds = roc_curve(y, prob, drop_intermediate=False)
    first = int(np.argmax(tpr >= min_sensitivity))  # tpr rises as thresholds fall
    threshold = float(min(thresholds[first], 1.0))  # roc_curve's first threshold is inf
    rates = rates_at_threshold(y, prob, threshold)
    return {"threshold": threshold, **{k: rates[k] for k in ("sensitivity", "specificity")}}


def report(y, prob, threshold: float = DECISION_THRESHOLD) -> dict:
    """Per-class precision/recall/F1/support, as the seeds print with ``classification_report``."""
    y, prob = _arrays(y, prob)
    return classification_report(
        y,
        predict_labels(prob, threshold),
        labels=[0, 1],
        target_names=list(CLASS_NAMES),
        output_dict=True,
        zero_division=0,
    )


def mcnemar(y, pred_a, pred_b) -> dict:
    """McNemar's test of equal error rates of two classifiers on the same patches.

    ``b`` = patches A gets right and B wrong, ``c`` = A wrong and B right. ``p_value`` is the
    exact two-sided binomial p (b ~ Bin(b + c, 1/2)); ``chi2_cc``/``p_chi2_cc`` the
    continuity-corrected chi-square version. With no discordant pairs both p-values are 1.
    """
    y = np.asarray(y).astype(int)
    right_a = np.asarray(pred_a) == y
    right_b = np.asarray(pred_b) == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    return mcnemar_from_counts(b, c)


def mcnemar_from_counts(b: int, c: int) -> dict:
    if b + c == 0:
        return {"b": b, "c": c, "p_value": 1.0, "chi2_cc": 0.0, "p_chi2_cc": 1.0}
    chi2_cc = (abs(b - c) - 1) ** 2 / (b + c)
    return {
        "b": b,
        "c": c,
        "p_value": float(stats.binomtest(b, b + c, 0.5).pvalue),
        "chi2_cc": float(chi2_cc),
        "p_chi2_cc": float(stats.chi2.sf(chi2_cc, df=1)),
    }


def _midrank_components(prob_pos: np.ndarray, prob_neg: np.ndarray):
    """DeLong structural components V10 (per tumour patch) and V01 (per normal patch)."""
    m, n = prob_pos.size, prob_neg.size
    both = np.concatenate([prob_pos, prob_neg])
    rank_all = stats.rankdata(both)
    v10 = (rank_all[:m] - stats.rankdata(prob_pos)) / n
    v01 = 1.0 - (rank_all[m:] - stats.rankdata(prob_neg)) / m
    return v10, v01


def delong(y, prob_a, prob_b) -> dict:
    """DeLong's test for two correlated ROC AUCs (same patches). Two-sided normal p-value."""
    y, prob_a = _arrays(y, prob_a)
    prob_b = np.asarray(prob_b, dtype=float).ravel()
    if not _has_both_classes(y):
        raise ValueError("DeLong's test needs both tumour and normal patches")
    pos, neg = y == 1, y == 0
    v10, v01 = zip(*(_midrank_components(p[pos], p[neg]) for p in (prob_a, prob_b)), strict=True)
    s10 = np.atleast_2d(np.cov(np.vstack(v10)))
    s01 = np.atleast_2d(np.cov(np.vstack(v01)))
    cov = s10 / pos.sum() + s01 / neg.sum()
    auc_a, auc_b = roc_auc_score(y, prob_a), roc_auc_score(y, prob_b)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc_a - auc_b) / np.sqrt(var_diff) if var_diff > 0 else 0.0
    return {
        "auc_a": float(auc_a),
        "auc_b": float(auc_b),
        "auc_diff": float(auc_a - auc_b),
        "se_diff": float(np.sqrt(max(var_diff, 0.0))),
        "z": float(z),
        "p_value": float(2 * stats.norm.sf(abs(z))),
    }


# -- statistics that respect patients ------------------------------------------------------------


def ci_unit(groups) -> str:
    """What a bootstrap or paired test resamples: whole patients when they are known."""
    return "patch" if groups is None else "patient"


def known_groups(frame) -> np.ndarray | None:
    """The ``patient`` column of a predictions frame when every row has one, else None
    (patches are then the unit)."""
    if "patient" not in frame or frame["patient"].isna().any():
        return None
    return frame["patient"].astype(str).to_numpy()


def _members(groups) -> list[np.ndarray]:
    """Positions of each group's patches, one array per group."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def delong_clustered(y, prob_a, prob_b, groups) -> dict:
    """DeLong's test with patients as clusters (Obuchowski 1997): the structural components
    are summed per patient and their (co)variances taken over patients, so correlated patches
    of one patient count as one draw. With one patch per patient it is DeLong's test."""
    y, prob_a = _arrays(y, prob_a)
    prob_b = np.asarray(prob_b, dtype=float).ravel()
    if not _has_both_classes(y):
        raise ValueError("DeLong's test needs both tumour and normal patches")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    members = _members(groups)
    k = len(members)
    if k < 2:
        raise ValueError("a clustered DeLong test needs at least two patients")
    aucs, vx, vy = [], [], []
    for prob in (prob_a, prob_b):
        v10, v01 = _midrank_components(prob[pos], prob[neg])
        per_patch = np.zeros(y.size)
        per_patch[pos], per_patch[neg] = v10, v01
        aucs.append(float(v10.mean()))
        vx.append(np.array([per_patch[i][pos[i]].sum() for i in members]))
        vy.append(np.array([per_patch[i][neg[i]].sum() for i in members]))
    m_i = np.array([pos[i].sum() for i in members])
    n_i = np.array([neg[i].sum() for i in members])
    dx = [vx[r] - m_i * aucs[r] for r in range(2)]
    dy = [vy[r] - n_i * aucs[r] for r in range(2)]
    scale = k / (k - 1)

    def cov(r, s):
        s10 = scale / m * np.sum(dx[r] * dx[s])
        s01 = scale / n * np.sum(dy[r] * dy[s])
        s11 = scale * (np.sum(dx[r] * dy[s]) + np.sum(dx[s] * dy[r]))
        return s10 / m + s01 / n + s11 / (m * n)

    var_diff = cov(0, 0) + cov(1, 1) - 2 * cov(0, 1)
    z = (aucs[0] - aucs[1]) / np.sqrt(var_diff) if var_diff > 0 else 0.0
    return {
        "auc_a": aucs[0],
        "auc_b": aucs[1],
        "auc_diff": aucs[0] - aucs[1],
        "se_diff": float(np.sqrt(max(var_diff, 0.0))),
        "z": float(z),
        "p_value": float(2 * stats.norm.sf(abs(z))),
        "unit": "patient",
    }


def mcnemar_clustered(y, pred_a, pred_b, groups) -> dict:
    """McNemar's test with patients as clusters (Durkalski et al. 2003): with d_i = b_i - c_i
    the discordant difference of patient i, X² = (Σ d_i)² / Σ d_i², chi-square with 1 df.
    ``b``/``c`` are the patch counts, as in ``mcnemar``."""
    y = np.asarray(y).astype(int)
    right_a = np.asarray(pred_a) == y
    right_b = np.asarray(pred_b) == y
    d = (right_a & ~right_b).astype(int) - (~right_a & right_b).astype(int)
    per_patient = np.array([d[i].sum() for i in _members(groups)])
    denominator = float(np.sum(per_patient**2))
    chi2 = float(per_patient.sum() ** 2 / denominator) if denominator else 0.0
    return {
        "b": int(np.sum(d == 1)),
        "c": int(np.sum(d == -1)),
        "p_value": float(stats.chi2.sf(chi2, df=1)) if denominator else 1.0,
        "chi2": chi2,
        "unit": "patient",
    }


PATIENT_AGGREGATION = "max"  # a patient's score: the max P(tumour) over its patches


def patient_level(frame, threshold: float = 0.5) -> dict | None:
    """Patient-level metrics from patch predictions (columns label, prob, patient): a patient is
    tumour when any of its patches is, and is scored by the max P(tumour) of its patches (so it
    is called tumour when any patch is called at ``threshold``). None without patients."""
    if known_groups(frame) is None:
        return None
    per_patient = frame.groupby("patient")[["label", "prob"]].max()
    m = binary_metrics(per_patient["label"], per_patient["prob"], threshold)
    keys = ("auc", "balanced_accuracy", "sensitivity", "specificity", "f1")
    return {
        "aggregation": PATIENT_AGGREGATION,
        "n_patients": m["n"],
        "n_tumour_patients": m["n_tumour"],
        **{k: m[k] for k in keys},
    }
