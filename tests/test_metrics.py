"""core.metrics against scikit-learn, hand-counted tables and published worked examples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from core import metrics

# A tiny hand-checkable case: threshold 0.5 gives TP=4, FN=2, TN=3, FP=1.
Y_SMALL = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P_SMALL = np.array([0.1, 0.2, 0.4, 0.7, 0.3, 0.45, 0.5, 0.6, 0.8, 0.95])


def _fixed_vectors(n=400, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(0.5 * y + rng.normal(0.25, 0.25, n), 0, 1)
    return y, prob


def test_confusion_and_rates_match_hand_counts():
    cm = metrics.confusion(Y_SMALL, P_SMALL, 0.5)
    assert cm.tolist() == [[3, 1], [2, 4]]
    rates = metrics.rates_at_threshold(Y_SMALL, P_SMALL, 0.5)
    assert rates == pytest.approx(
        {"sensitivity": 4 / 6, "specificity": 3 / 4, "ppv": 4 / 5, "npv": 3 / 5}
    )
    np.testing.assert_allclose(metrics.row_normalised(cm), [[0.75, 0.25], [1 / 3, 2 / 3]])


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.72])
def test_binary_metrics_agree_with_sklearn(threshold):
    y, prob = _fixed_vectors()
    pred = (prob >= threshold).astype(int)
    m = metrics.binary_metrics(y, prob, threshold)
    assert m["n"] == 400 and m["n_tumour"] == int(y.sum())
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert m["ap"] == pytest.approx(skm.average_precision_score(y, prob))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["recall"] == pytest.approx(m["sensitivity"])
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, prob))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))


def test_single_class_gives_undefined_auc_not_a_crash():
    m = metrics.binary_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    assert m["auc"] is None and m["specificity"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert metrics.bootstrap_auc_ci([1, 1, 1], [0.2, 0.6, 0.9]) is None


def test_curves_are_sklearns():
    y, prob = _fixed_vectors()
    fpr, tpr, _ = skm.roc_curve(y, prob)
    curve = metrics.roc(y, prob)
    np.testing.assert_allclose(curve["fpr"], fpr)
    np.testing.assert_allclose(curve["tpr"], tpr)
    precision, recall, _ = skm.precision_recall_curve(y, prob)
    np.testing.assert_allclose(metrics.pr(y, prob)["precision"], precision)
    np.testing.assert_allclose(metrics.pr(y, prob)["recall"], recall)


def test_bootstrap_ci_is_seeded_and_contains_point_estimate():
    y, prob = _fixed_vectors()
    auc = skm.roc_auc_score(y, prob)
    ci = metrics.bootstrap_auc_ci(y, prob, n_boot=300, seed=7)
    assert ci == metrics.bootstrap_auc_ci(y, prob, n_boot=300, seed=7)
    assert ci != metrics.bootstrap_auc_ci(y, prob, n_boot=300, seed=8)
    lo, hi = ci.bounds
    assert (ci.unit, ci.n_boot, ci.unusable, ci.note) == ("patch", 300, 0, "")
    assert lo < auc < hi
    assert 0.01 < hi - lo < 0.3


def test_reliability_and_ece_by_hand():
    y = np.array([0, 1, 1, 1])
    prob = np.array([0.1, 0.1, 0.9, 0.9])
    curve = metrics.reliability(y, prob, n_bins=10)
    np.testing.assert_allclose(curve["mean_prob"], [0.1, 0.9])
    np.testing.assert_allclose(curve["frac_tumour"], [0.5, 1.0])
    assert curve["count"].tolist() == [2, 2]
    # 0.5·|0.5 − 0.1| + 0.5·|1.0 − 0.9|
    assert metrics.expected_calibration_error(y, prob, n_bins=10) == pytest.approx(0.25)


def test_threshold_for_sensitivity_is_the_highest_that_reaches_it():
    y, prob = _fixed_vectors()
    for target in (0.8, 0.9, 0.95):
        chosen = metrics.threshold_for_sensitivity(y, prob, target)
        assert chosen["sensitivity"] >= target
        higher = prob[prob > chosen["threshold"]].min()
        assert metrics.rates_at_threshold(y, prob, higher)["sensitivity"] < target
        assert (
            chosen["specificity"]
            == metrics.rates_at_threshold(y, prob, chosen["threshold"])["specificity"]
        )


def test_report_matches_sklearn_classification_report():
    rep = metrics.report(Y_SMALL, P_SMALL, 0.5)
    assert rep["tumour"]["recall"] == pytest.approx(4 / 6)
    assert rep["normal"]["precision"] == pytest.approx(3 / 5)
    assert rep["tumour"]["support"] == 6


# McNemar worked examples (expected values come from the cited sources, not from our code):
# - MedCalc manual, "McNemar test": discordant pairs 3 and 1 (n = 20) -> exact P = 0.625.
# - calcugator.com chi2_mcnemar example (death-penalty survey): discordant 11 and 3 ->
#   two-tailed exact probability 0.057373046875 (= 940 / 2**14).
# - stat-tools.xyz McNemar (b = 12, c = 5): chi-square (cc) 2.1176, p 0.1456, exact p 0.1435.
@pytest.mark.parametrize(
    ("b", "c", "p_exact"), [(3, 1, 0.625), (1, 3, 0.625), (11, 3, 0.057373046875), (12, 5, 0.1435)]
)
def test_mcnemar_exact_textbook_values(b, c, p_exact):
    result = metrics.mcnemar_from_counts(b, c)
    assert result["p_value"] == pytest.approx(p_exact, abs=5e-5)


def test_mcnemar_continuity_corrected_textbook_value():
    result = metrics.mcnemar_from_counts(12, 5)
    assert result["chi2_cc"] == pytest.approx(2.1176, abs=1e-4)
    assert result["p_chi2_cc"] == pytest.approx(0.1456, abs=1e-4)


def test_mcnemar_counts_discordant_pairs_from_predictions():
    # 11 patches A right / B wrong, 3 A wrong / B right, 6 both right.
    y = np.ones(20, dtype=int)
    pred_a = np.array([1] * 11 + [0] * 3 + [1] * 6)
    pred_b = np.array([0] * 11 + [1] * 3 + [1] * 6)
    result = metrics.mcnemar(y, pred_a, pred_b)
    assert (result["b"], result["c"]) == (11, 3)
    assert result["p_value"] == pytest.approx(940 / 2**14)
    assert metrics.mcnemar(y, pred_a, pred_a)["p_value"] == 1.0


def _delong_by_definition(y, prob_a, prob_b):
    """DeLong et al. (1988) straight from the definition: O(m·n) pairwise kernel."""

    def components(prob):
        pos, neg = prob[y == 1], prob[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = components(prob_a), components(prob_b)
    m, n = v10a.size, v01a.size
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / m + s01 / n
    return np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_matches_definition_and_sklearn_aucs():
    y, prob_a = _fixed_vectors(n=120, seed=1)
    rng = np.random.default_rng(2)
    prob_b = np.round(np.clip(prob_a + rng.normal(0, 0.2, y.size), 0, 1), 1)  # with ties
    result = metrics.delong(y, prob_a, prob_b)
    assert result["auc_a"] == pytest.approx(skm.roc_auc_score(y, prob_a))
    assert result["auc_b"] == pytest.approx(skm.roc_auc_score(y, prob_b))
    assert result["se_diff"] == pytest.approx(_delong_by_definition(y, prob_a, prob_b))
    assert 0 <= result["p_value"] <= 1


def test_delong_se_agrees_with_paired_bootstrap():
    y, prob_a = _fixed_vectors(n=300, seed=4)
    rng = np.random.default_rng(5)
    prob_b = np.clip(prob_a + rng.normal(0, 0.25, y.size), 0, 1)
    diffs = []
    for _ in range(400):
        idx = rng.integers(0, y.size, y.size)
        diffs.append(
            skm.roc_auc_score(y[idx], prob_a[idx]) - skm.roc_auc_score(y[idx], prob_b[idx])
        )
    se_boot = np.std(diffs)
    assert metrics.delong(y, prob_a, prob_b)["se_diff"] == pytest.approx(se_boot, rel=0.2)


def test_delong_identical_models_is_not_significant():
    y, prob = _fixed_vectors()
    assert metrics.delong(y, prob, prob)["p_value"] == 1.0


def test_confusion_invariant_over_thresholds():
    y, prob = _fixed_vectors(n=50)
    for t in np.linspace(0, 1, 11):
        cm = metrics.confusion(y, prob, t)
        assert cm.sum() == 50 and cm[1].sum() == y.sum()


def _clustered(n_patients=30, per_patient=20, seed=0):
    """Patches of a patient share a random offset: they are far from independent."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), per_patient)
    y = (rng.random(patients.size) < rng.random(n_patients)[patients]).astype(int)
    offset = rng.normal(0, 1.0, n_patients)[patients]
    prob = 1 / (1 + np.exp(-(1.2 * y - 0.6 + offset + rng.normal(0, 0.5, y.size))))
    return y, prob, patients


def test_cluster_bootstrap_resamples_patients_and_is_wider_when_patches_correlate():
    y, prob, patients = _clustered()
    by_patch = metrics.bootstrap_auc_ci(y, prob, n_boot=300, seed=1)
    by_patient = metrics.bootstrap_auc_ci(y, prob, n_boot=300, seed=1, groups=patients)
    assert by_patient == metrics.bootstrap_auc_ci(y, prob, n_boot=300, seed=1, groups=patients)
    assert by_patient.unit == "patient" and by_patch.unit == "patch"
    auc = skm.roc_auc_score(y, prob)
    assert by_patient.low < auc < by_patient.high
    assert by_patient.high - by_patient.low > 1.3 * (by_patch.high - by_patch.low)
    assert metrics.ci_unit(patients) == "patient" and metrics.ci_unit(None) == "patch"


def test_clustered_delong_is_delong_with_one_patch_per_patient_and_wider_with_clusters():
    y, prob_a = _fixed_vectors()
    prob_b = np.clip(prob_a + np.random.default_rng(5).normal(0, 0.2, y.size), 0, 1)
    plain = metrics.delong(y, prob_a, prob_b)
    single = metrics.delong_clustered(y, prob_a, prob_b, np.arange(y.size))
    assert single["auc_diff"] == pytest.approx(plain["auc_diff"])
    # Obuchowski's counts (patients with tumour / with normal patches) make it DeLong exactly;
    # k/(k-1) over all patients made it 0.72098 against 0.71031 (issue 27)
    assert single["z"] == pytest.approx(plain["z"], rel=1e-12)
    assert single["se_diff"] == pytest.approx(plain["se_diff"], rel=1e-12)
    y, prob, patients = _clustered()
    other = np.clip(prob + np.random.default_rng(2).normal(0, 0.15, y.size), 0, 1)
    assert (
        metrics.delong_clustered(y, prob, other, patients)["se_diff"]
        > metrics.delong(y, prob, other)["se_diff"]
    )


def test_clustered_mcnemar_follows_durkalski_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0])
    pred_a = np.array([1, 1, 1, 0, 1, 0])  # right, right, right, right, wrong, right
    pred_b = np.array([0, 0, 1, 1, 1, 0])  # wrong, wrong, right, wrong, wrong, right
    patients = np.array(["p", "p", "q", "q", "r", "r"])
    # d_i = b_i - c_i: p: 2, q: 1, r: 0 -> X² = 3² / (4 + 1) = 1.8
    result = metrics.mcnemar_clustered(y, pred_a, pred_b, patients)
    assert result["b"] == 3 and result["c"] == 0 and result["unit"] == "patient"
    assert result["chi2"] == pytest.approx(1.8)
    assert result["p_value"] == pytest.approx(0.1797, abs=1e-4)


def test_patient_level_uses_the_max_patch_probability():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "patient": ["a", "a", "b", "b", "c"],
            "label": [0, 1, 0, 0, 0],
            "prob": [0.2, 0.7, 0.6, 0.1, 0.3],
        }
    )
    level = metrics.patient_level(frame, threshold=0.5)
    assert level["aggregation"] == "max" and level["n_patients"] == 3
    assert level["n_tumour_patients"] == 1
    assert level["sensitivity"] == 1.0 and level["specificity"] == 0.5  # b is called (0.6)
    assert level["auc"] == 1.0
    assert metrics.patient_level(frame.drop(columns="patient")) is None


@pytest.mark.parametrize("patients", [False, True])
@pytest.mark.parametrize("rounding", [None, 2])  # 2 decimals: many tied probabilities
def test_each_resample_auc_is_roc_auc_score_on_the_resampled_patches(patients, rounding):
    """The one-sort AUC of every bootstrap resample equals scikit-learn's on the same draws
    (issue 27, item 6: same seed and resamples, intervals equal to 1e-6)."""
    y, prob, groups = _clustered(n_patients=25, per_patient=12, seed=4)
    prob = prob if rounding is None else np.round(prob, rounding)
    resampler = metrics.Resampler.of(y, prob, groups if patients else None)
    aucs, expected = [], []
    for block in resampler.draws(60, seed=3):
        aucs.extend(resampler.aucs(block))
        for row in range(block[0].shape[0]):
            drawn = resampler.patch_indices(block, row)
            both = np.unique(y[drawn]).size == 2
            expected.append(skm.roc_auc_score(y[drawn], prob[drawn]) if both else np.nan)
    np.testing.assert_allclose(aucs, expected, rtol=0, atol=1e-12)
    ci = metrics.bootstrap_auc_ci(y, prob, 60, seed=3, groups=groups if patients else None)
    usable = np.array(expected)[~np.isnan(expected)]
    assert ci.bounds == pytest.approx(tuple(np.percentile(usable, [2.5, 97.5])), abs=1e-6)


def test_the_bootstrap_keeps_each_stratum_at_its_size():
    """Patches: each class keeps its count. Patients: each resample holds as many patients with
    tumour patches as the split has (and as many without)."""
    y, prob, groups = _clustered(n_patients=20, per_patient=5, seed=6)
    plain = metrics.Resampler.of(y, prob)
    by_patient = metrics.Resampler.of(y, prob, groups)
    has_tumour = np.array([y[groups == g].max() for g in np.unique(groups)]) == 1
    for resampler in (plain, by_patient):
        for block in resampler.draws(10, seed=0):
            for row in range(block[0].shape[0]):
                drawn = resampler.patch_indices(block, row)
                if resampler is plain:
                    assert np.bincount(y[drawn]).tolist() == np.bincount(y).tolist()
                else:
                    patients = resampler.items(block, row)
                    assert has_tumour[patients].sum() == has_tumour.sum()
                    assert len(patients) == has_tumour.size


def test_too_few_patients_give_the_patch_interval_with_a_note_never_a_degenerate_one():
    """One patient gave 0.9909–0.9909; two gave a lower end equal to the AUC (issue 27)."""
    y, prob, _ = _clustered(n_patients=1, per_patient=300, seed=2)
    for groups in (np.zeros(y.size, dtype=int), np.arange(y.size) % 2):
        ci = metrics.bootstrap_auc_ci(y, prob, n_boot=200, seed=0, groups=groups)
        assert ci.unit == "patch" and "patches, not patients" in ci.note
        assert ci.high - ci.low > 0.01
        assert ci.low < skm.roc_auc_score(y, prob) < ci.high
    y, prob, groups = _clustered(n_patients=12, per_patient=10, seed=1)
    assert metrics.patch_or_patient(y, groups).name == "patient"
    assert metrics.patch_or_patient(y, None).note == ""


def test_unusable_patient_resamples_are_counted_not_hidden():
    """Every patient has a tumour patch, so a resample that misses the three patients with a
    normal patch holds one class: it is left out and counted (300 of 1,000 went unsaid)."""
    groups = np.repeat(np.arange(12), 4)
    y = np.ones(groups.size, dtype=int)
    y[[0, 5, 9]] = 0  # patients 0, 1, 2 have one normal patch each
    prob = np.linspace(0, 1, y.size)
    ci = metrics.bootstrap_auc_ci(y, prob, n_boot=400, seed=0, groups=groups)
    resampler = metrics.Resampler.of(y, prob, groups)
    misses = sum(
        int(not np.isin(resampler.items(block, row), [0, 1, 2]).any())
        for block in resampler.draws(400, seed=0)
        for row in range(block[0].shape[0])
    )
    assert ci.unit == "patient" and ci.unusable == misses > 0
    assert ci.to_dict()["unusable_resamples"] == misses


def test_a_block_gives_the_same_aucs_whatever_parts_it_is_computed_in(monkeypatch):
    """A block of resamples is computed in parts sized to the memory (BLOCK_ENTRIES): one
    resample at a time or the whole block at once give the same AUCs."""
    y, prob, groups = _clustered(n_patients=15, per_patient=8, seed=5)
    prob = np.round(prob, 2)  # ties between the classes too
    for unit_groups in (None, groups):
        resampler = metrics.Resampler.of(y, prob, unit_groups)
        blocks = list(resampler.draws(40, seed=2))
        by_parts = []
        for entries in (1, 7 * resampler.largest_class, 10**6):
            monkeypatch.setattr(metrics, "BLOCK_ENTRIES", entries)
            by_parts.append(np.concatenate([resampler.aucs(block) for block in blocks]))
        assert by_parts[0].size == 40
        for other in by_parts[1:]:
            np.testing.assert_array_equal(other, by_parts[0])
