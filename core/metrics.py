"""Binary classification metrics for P(tumour) predictions, from scikit-learn.

Conventions: labels are 0 (normal) / 1 (tumour); ``prob`` is P(tumour); a patch is called
tumour when ``prob >= threshold`` (the same rule as ``sklearn.metrics.roc_curve``; the one
definition of a call is ``core.calls``).

What is not in scikit-learn, and how it is done here:
- AUC 95% CI: seeded percentile bootstrap over patches within each class, or over patients
  (a cluster bootstrap: a patient's patches are resampled together) within patients with and
  without tumour patches, where patients are known and numerous enough (``patch_or_patient``).
  Each resample's AUC comes from one sort (``Resampler``), equal to ``roc_auc_score``.
- ECE: the bins of ``sklearn.calibration.calibration_curve`` (uniform), weighted by bin size.
- McNemar: exact two-sided binomial test on the discordant pairs (``scipy.stats.binomtest``),
  which is valid for any count (statsmodels' default); the chi-square statistic with Edwards'
  continuity correction, (|b - c| - 1)^2 / (b + c), and its p-value are reported beside it.
- Paired AUC: DeLong, DeLong & Clarke-Pearson (1988) test, computed with the midrank algorithm
  of Sun & Xu (2014); the AUCs themselves come from ``roc_auc_score``.
- With patients known, the paired tests treat each patient as a cluster: DeLong as generalised
  by Obuchowski (1997) and McNemar as by Durkalski et al. (2003) (``*_clustered``).
- Every test result carries ``test``, its name as shown to people (``TEST_NAMES``).
Reference values for all of these (pROC, Obuchowski's R code, statsmodels, scikit-learn,
torchmetrics) are fixtures in tests/fixtures/stats, with the scripts that made them.
- Patient-level metrics: a patient is tumour when any of its patches is, scored by the max
  P(tumour) of its patches (``patient_level``).
"""

from __future__ import annotations

from dataclasses import dataclass

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
from core.errors import InputError

# Each test's name wherever its p-value is shown (JSON ``*_test`` keys, CLI, Compare page).
TEST_NAMES = {
    "mcnemar": "McNemar exact binomial, patches",
    "mcnemar_clustered": "McNemar clustered χ² (Durkalski), patients",
    "delong": "DeLong, patches",
    "delong_clustered": "DeLong clustered (Obuchowski), patients",
}


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


@dataclass(frozen=True)
class AucCI:
    """A percentile bootstrap interval of the ROC AUC and what it rests on."""

    low: float
    high: float
    unit: str  # what was resampled: "patch" or "patient" (whole patients with their patches)
    n_boot: int
    unusable: int = 0  # resamples holding one class only (AUC undefined), left out
    note: str = ""  # why patches are the unit although patients are known
    level: float = 0.95

    @property
    def bounds(self) -> tuple[float, float]:
        return self.low, self.high

    def to_dict(self) -> dict:
        """The JSON form (``auc_ci`` in evaluate and compare)."""
        return {
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "method": "percentile bootstrap",
            "unit": self.unit,
            "stratified_by": STRATA[self.unit],
            "n_boot": self.n_boot,
            "unusable_resamples": self.unusable,
            "note": self.note,
        }


# What the bootstrap keeps in proportion in every resample, by unit.
STRATA = {"patch": "class", "patient": "whether a patient has tumour patches"}


def bootstrap_auc_ci(
    y, prob, n_boot: int = 1000, seed: int = 0, level: float = 0.95, groups=None
) -> AucCI | None:
    """Seeded, stratified percentile bootstrap interval of the ROC AUC.

    Resamples patches within each class (as pROC's ``ci.auc(method = "bootstrap")`` does), or,
    with ``groups`` (the patient of each patch), whole patients with all their patches, within
    two strata: patients with tumour patches and patients without (a cluster bootstrap, since
    patches of one patient are not independent). Too few patients for that (``patch_or_patient``)
    means patches are resampled and ``note`` says why. Resamples with one class only (possible
    when every patient has a tumour patch) are left out and counted in ``unusable``.
    None when ``y`` has one class, ``n_boot`` is 0 (no CI asked for) or no resample is usable.

    Each resample's AUC is computed from the patches sorted once (``Resampler``); it equals
    ``roc_auc_score`` on the resampled patches (tests/test_metrics.py checks it).
    """
    y, prob = _arrays(y, prob)
    if n_boot < 1 or not _has_both_classes(y):
        return None
    unit = patch_or_patient(y, groups)
    resampler = Resampler.of(y, prob, unit.groups)
    aucs = np.concatenate([resampler.aucs(block) for block in resampler.draws(n_boot, seed)])
    usable = aucs[~np.isnan(aucs)]
    if not usable.size:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(usable, [tail, 100 - tail])
    return AucCI(
        float(lo), float(hi), unit.name, n_boot, int(aucs.size - usable.size), unit.note, level
    )


RESAMPLES_PER_BLOCK = 16  # the draws come 16 resamples at a time (part of the seeded stream)
# A block is computed in parts whose arrays (resamples × patches of a class, int64) hold about
# this many entries, 256 KB: larger temporaries are handed back to the OS when freed and
# page-faulted in again for the next part, which took more time than the arithmetic (32,768
# patches, 1,000 resamples, 2 loaded cores: 120,000 page faults and 2.4 s in parts of 4
# resamples, none and 0.7 s in parts of 1).
BLOCK_ENTRIES = 32_768


@dataclass(frozen=True)
class Resampler:
    """The stratified bootstrap of ``bootstrap_auc_ci``, with the patches sorted once.

    Items are patches (strata: tumour patches, normal patches) or patients (strata: patients
    with tumour patches, patients without), each stratum in the order of the patches.

    A resample is a multiset of patches: with w the number of times each patch is in it, its
    AUC (Mann-Whitney, ties count ½) is Σ over tumour patches of w · (normal weight below it +
    ½ normal weight tied with it), over W_tumour · W_normal. Along the patches of each class in
    ascending P(tumour), the normal weight below a tumour patch is one cumulative sum, so a
    resample costs O(patches), and a part of a block of resamples is one array operation."""

    strata: tuple[np.ndarray, ...]  # the items of each stratum
    below: np.ndarray  # per tumour patch, ascending: how many normal patches have a lower P
    tied: np.ndarray  # the tumour patches (positions in that order) sharing a P with normal ones
    up_to_tied: np.ndarray  # per tied tumour patch: normal patches with a lower or equal P
    largest_class: int  # patches of the larger class: the width of the arrays
    # patch unit: per stratum, the place of each of its patches in ascending P(tumour)
    ascending_place: tuple[np.ndarray, np.ndarray] | None
    members: tuple[np.ndarray, ...] | None = None  # patient unit: each patient's patch positions
    # patient unit: the patient of each tumour patch and of each normal patch, ascending P
    patient_of: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def of(cls, y, prob, groups=None) -> Resampler:
        y, prob = _arrays(y, prob)
        ascending = np.argsort(prob, kind="stable")
        tumour, normal = ascending[y[ascending] == 1], ascending[y[ascending] == 0]
        below = np.searchsorted(prob[normal], prob[tumour], side="left")
        up_to = np.searchsorted(prob[normal], prob[tumour], side="right")
        tied = np.flatnonzero(up_to > below)
        sort = (below, tied, up_to[tied], max(tumour.size, normal.size))
        if groups is None:
            strata = (np.flatnonzero(y == 1), np.flatnonzero(y == 0))
            # the j-th patch of a class in patch order is the j-th smallest position in that
            # class's ascending-P list: its place there is argsort(list)[j]
            place = (np.argsort(tumour), np.argsort(normal))
            return cls(strata, *sort, place)
        members = tuple(_members(groups))
        patient = np.empty(y.size, dtype=int)
        for k, rows in enumerate(members):
            patient[rows] = k
        has_tumour = np.bincount(patient, weights=y, minlength=len(members)) > 0
        strata = (np.flatnonzero(has_tumour), np.flatnonzero(~has_tumour))
        return cls(strata, *sort, None, members, (patient[tumour], patient[normal]))

    def draws(self, n_boot: int, seed: int):
        """Blocks of ≤ RESAMPLES_PER_BLOCK resamples: per stratum, a resamples × stratum-size
        array of positions in the stratum (drawn with replacement, each stratum to its own
        size). Seeded."""
        rng = np.random.default_rng(seed)
        for first in range(0, n_boot, RESAMPLES_PER_BLOCK):
            rows = min(RESAMPLES_PER_BLOCK, n_boot - first)
            yield tuple(rng.integers(0, s.size, (rows, s.size)) for s in self.strata)

    def aucs(self, block) -> np.ndarray:
        """The AUC of each resample of a block of ``draws``; NaN where a resample holds one
        class only. Computed in parts of about BLOCK_ENTRIES entries per array."""
        rows = max(1, BLOCK_ENTRIES // max(self.largest_class, 1))
        parts = range(0, block[0].shape[0], rows)
        return np.concatenate([self._aucs(tuple(d[k : k + rows] for d in block)) for k in parts])

    def items(self, block, row: int) -> np.ndarray:
        """The items (patch positions or patient numbers) one resample of a block drew."""
        return np.concatenate([s[d[row]] for s, d in zip(self.strata, block, strict=True)])

    def patch_indices(self, block, row: int) -> np.ndarray:
        """The patch positions of one resample of a block, repeats included: what the
        resample is, for checking its AUC against ``roc_auc_score``."""
        drawn = self.items(block, row)
        return drawn if self.members is None else np.concatenate([self.members[k] for k in drawn])

    def _aucs(self, part) -> np.ndarray:
        tumour, normal = self._weights(part)
        rows = normal.shape[0]
        normal_before = np.zeros((rows, normal.shape[1] + 1), dtype=normal.dtype)
        np.cumsum(normal, axis=1, out=normal_before[:, 1:])  # [k]: weight of the first k

        def at(positions):  # normal_before at these positions, each resample
            return np.take(normal_before, positions, axis=1)

        # in integers, twice the wins: 2 × the normal weight below + the normal weight tied
        twice_wins = 2 * _row_dots(tumour, at(self.below))
        if self.tied.size:
            beside = at(self.up_to_tied) - at(self.below[self.tied])
            twice_wins += _row_dots(np.take(tumour, self.tied, axis=1), beside)
        pairs = tumour.sum(axis=1) * normal_before[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, twice_wins / (2 * pairs), np.nan)

    def _weights(self, part) -> tuple[np.ndarray, np.ndarray]:
        """How many times each tumour and each normal patch (ascending P) is in each resample
        of a part of a block: resamples × patches of that class (C order, as ``take`` gives)."""
        if self.members is None:  # the strata are the tumour and the normal patches
            return tuple(
                _row_counts(np.take(place, d), place.size)
                for d, place in zip(part, self.ascending_place, strict=True)
            )
        patients = sum(
            _row_counts(np.take(s, d), len(self.members))
            for d, s in zip(part, self.strata, strict=True)
        )
        return tuple(np.take(patients, of, axis=1) for of in self.patient_of)


def _row_counts(index: np.ndarray, size: int) -> np.ndarray:
    """Row-wise counts (int64) of ``index`` (resamples × draws) into ``size`` bins."""
    rows = index.shape[0]
    offsets = np.arange(rows)[:, None] * size
    return np.bincount((index + offsets).ravel(), minlength=rows * size).reshape(rows, size)


def _row_dots(a, b) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def format_ci(ci, digits: int = 3) -> str:
    """ "0.812–0.871" for an ``AucCI`` or a (low, high) pair, "n/a" when there is none."""
    if ci is None:
        return "n/a"
    lo, hi = ci.bounds if isinstance(ci, AucCI) else ci
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


RISK_COVERAGE_POINTS = 101


def risk_coverage(y, prob, threshold: float = DECISION_THRESHOLD) -> dict:
    """Selective classification: the model abstains on the patches it is least sure of
    (smallest |P(tumour) − threshold|, as Compare ranks disagreements) and is scored on the rest.
    ``abstained`` (share of patches, 0 → ~1) and ``risk`` (error rate among the kept patches),
    at up to RISK_COVERAGE_POINTS evenly spaced shares."""
    y, prob = _arrays(y, prob)
    if not y.size:
        return {"abstained": np.zeros(0), "risk": np.zeros(0)}
    order = np.argsort(-np.abs(prob - threshold), kind="stable")  # surest first
    wrong = predict_labels(prob[order], threshold) != y[order]
    kept = np.arange(1, y.size + 1)
    pick = np.unique(np.linspace(y.size - 1, 0, RISK_COVERAGE_POINTS).round().astype(int))[::-1]
    return {"abstained": 1 - kept[pick] / y.size, "risk": (np.cumsum(wrong) / kept)[pick]}


def threshold_for_sensitivity(y, prob, min_sensitivity: float) -> dict:
    """The highest threshold whose sensitivity is ≥ ``min_sensitivity`` (so specificity is
    as high as it can be there), with the sensitivity and specificity it achieves."""
    y, prob = _arrays(y, prob)
    if not _has_both_classes(y):
        raise InputError("need both tumour and normal patches to choose a threshold")
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
        return {
            "test": TEST_NAMES["mcnemar"],
            "b": b,
            "c": c,
            "p_value": 1.0,
            "chi2_cc": 0.0,
            "p_chi2_cc": 1.0,
        }
    chi2_cc = (abs(b - c) - 1) ** 2 / (b + c)
    return {
        "test": TEST_NAMES["mcnemar"],
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
    auc_a, auc_b = roc_auc_score(y, prob_a), roc_auc_score(y, prob_b)
    aucs = {
        "test": TEST_NAMES["delong"],
        "auc_a": float(auc_a),
        "auc_b": float(auc_b),
        "auc_diff": float(auc_a - auc_b),
    }
    if min(pos.sum(), neg.sum()) < 2:  # one patch of a class: its variance is undefined
        return {**aucs, "se_diff": float("nan"), "z": float("nan"), "p_value": float("nan")}
    v10, v01 = zip(*(_midrank_components(p[pos], p[neg]) for p in (prob_a, prob_b)), strict=True)
    s10 = np.atleast_2d(np.cov(np.vstack(v10)))
    s01 = np.atleast_2d(np.cov(np.vstack(v01)))
    cov = s10 / pos.sum() + s01 / neg.sum()
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc_a - auc_b) / np.sqrt(var_diff) if var_diff > 0 else 0.0
    return {
        **aucs,
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


# Below these counts a patient-resampled interval or a patient-clustered test rests on too few
# independent draws to mean anything (two patients give three distinct resamples, one gives a
# zero-width interval): patches are then the unit, and the result says so.
MIN_PATIENTS = 10
MIN_PATIENTS_PER_SIDE = 2  # patients with tumour patches, and patients with normal patches


@dataclass(frozen=True)
class Unit:
    """What a bootstrap or a paired test treats as independent draws."""

    groups: np.ndarray | None  # the patient of each patch when patients are the unit
    note: str = ""  # why patches are the unit although patients are known

    @property
    def name(self) -> str:
        return ci_unit(self.groups)


def patch_or_patient(y, groups) -> Unit:
    """Patients as the unit when they are known and there are at least MIN_PATIENTS of them,
    MIN_PATIENTS_PER_SIDE with tumour patches and as many with normal patches; else patches,
    with a note saying why."""
    if groups is None:
        return Unit(None)
    y, groups = np.asarray(y).astype(int), np.asarray(groups)
    n_patients = np.unique(groups).size
    with_tumour, with_normal = (np.unique(groups[y == label]).size for label in (1, 0))
    if n_patients >= MIN_PATIENTS and min(with_tumour, with_normal) >= MIN_PATIENTS_PER_SIDE:
        return Unit(groups)
    return Unit(
        None,
        f"patches, not patients: {n_patients} patient(s), {with_tumour} with tumour and "
        f"{with_normal} with normal patches; resampling or clustering by patient needs "
        f"≥ {MIN_PATIENTS} patients, ≥ {MIN_PATIENTS_PER_SIDE} with each kind of patch",
    )


def _members(groups) -> list[np.ndarray]:
    """Positions of each group's patches, one array per group."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def paired_delong(y, prob_a, prob_b, groups=None) -> dict:
    """DeLong's test of two models on the same patches, by patient (Obuchowski's clustered
    DeLong) when ``groups`` are given, by patch otherwise: what Compare and the robustness
    sweep report."""
    if groups is None:
        return delong(y, prob_a, prob_b)
    return delong_clustered(y, prob_a, prob_b, groups)


def delong_clustered(y, prob_a, prob_b, groups) -> dict:
    """DeLong's test with patients as clusters (Obuchowski 1997): the structural components
    are summed per patient and their (co)variances taken over patients, so correlated patches
    of one patient count as one draw. With one patch per patient it is DeLong's test (checked
    against Obuchowski's published R code and pROC in tests/fixtures/stats)."""
    y, prob_a = _arrays(y, prob_a)
    prob_b = np.asarray(prob_b, dtype=float).ravel()
    if not _has_both_classes(y):
        raise ValueError("DeLong's test needs both tumour and normal patches")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    members = _members(groups)
    k = len(members)
    if k < 2:
        raise InputError("a clustered DeLong test needs at least two patients")
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
    # Obuchowski's small-sample factors: the tumour term is spread over the patients that have
    # tumour patches, the normal term over those with normal patches, the cross term over all.
    k10, k01 = int(np.sum(m_i > 0)), int(np.sum(n_i > 0))
    if min(k10, k01) < 2:
        raise ValueError(
            "a clustered DeLong test needs two patients with tumour patches and two with normal ones"
        )

    def cov(r, s):
        s10 = k10 / (k10 - 1) / m * np.sum(dx[r] * dx[s])
        s01 = k01 / (k01 - 1) / n * np.sum(dy[r] * dy[s])
        s11 = k / (k - 1) * (np.sum(dx[r] * dy[s]) + np.sum(dx[s] * dy[r]))
        return s10 / m + s01 / n + s11 / (m * n)

    var_diff = cov(0, 0) + cov(1, 1) - 2 * cov(0, 1)
    z = (aucs[0] - aucs[1]) / np.sqrt(var_diff) if var_diff > 0 else 0.0
    return {
        "test": TEST_NAMES["delong_clustered"],
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
        "test": TEST_NAMES["mcnemar_clustered"],
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
