"""Comparing N checkpoints on the same patches.

``evaluate_checkpoints`` runs (or reads from cache) ``core.evaluate.predict_split`` for each
checkpoint; everything else works on the resulting ``{model name: predictions}`` dict:

- ``threshold_free`` — per model ROC/PR curves, AUC with its seeded bootstrap CI, AP,
  reliability curve (computed once; does not depend on thresholds).
- ``at_thresholds`` — per model confusion matrix and metrics at its own threshold, the
  seed-style classification report, and paired tests (McNemar at the thresholds, DeLong for AUC)
  between every pair of models.
- ``disagreements`` — patches where the models disagree and/or are all wrong, most confident first.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import metrics
from core.catalogue import model_names
from core.evaluate import (
    cached_auc_ci,
    interval_fields,
    labelled,
    predict_split,
    split_fingerprint,
)

DISAGREEMENT_KINDS = {
    "disagree": "models disagree",
    "all_wrong": "all models wrong",
    "disagree_or_all_wrong": "models disagree or all are wrong",
}


def evaluate_checkpoints(
    paths, ds, split: str = "test", tta: bool = False, progress=None, **predict_kwargs
) -> dict[str, pd.DataFrame]:
    """``{name: predictions}`` for each checkpoint (cached per checkpoint, see core.evaluate).

    ``progress(done, total)`` counts patches over all models together.
    """
    paths = list(paths)
    fingerprint = split_fingerprint(ds, split)  # the data files' state, taken once for all
    results = {}
    for k, (name, path) in enumerate(zip(model_names(paths), paths, strict=True)):

        def model_progress(done, total, k=k):
            if progress is not None:
                progress(k * total + done, len(paths) * total)

        results[name] = predict_split(
            path,
            ds,
            split=split,
            tta=tta,
            progress=model_progress,
            fingerprint=fingerprint,
            **predict_kwargs,
        )
    if progress is not None:
        progress(1, 1)
    return results


def content_keys(preds: dict[str, pd.DataFrame]) -> tuple[str, ...]:
    """One hash per model of what its predictions hold (patch positions, labels, P(tumour)):
    a cache key for results computed from them that costs no file access."""
    keys = []
    for name, frame in preds.items():
        digest = hashlib.sha256(name.encode())
        for column in ("index", "label", "prob"):
            digest.update(np.ascontiguousarray(frame[column].to_numpy()).tobytes())
        keys.append(digest.hexdigest())
    return tuple(keys)


def joined(preds: dict[str, pd.DataFrame], labelled_only: bool = True) -> pd.DataFrame:
    """One row per (labelled) patch: index, id, label (+patient/x/y) and ``prob:<model>``."""
    frames = [labelled(frame) if labelled_only else frame for frame in preds.values()]
    base = frames[0].drop(columns="prob").reset_index(drop=True)
    for name, frame in zip(preds, frames, strict=True):
        if not np.array_equal(frame["index"].to_numpy(), base["index"].to_numpy()):
            raise ValueError(f"{name}: predictions are not on the same patches as the others")
        base[f"prob:{name}"] = frame["prob"].to_numpy()
    return base


@dataclass(frozen=True)
class Curves:
    """Threshold-free results of one model."""

    auc: float | None
    auc_ci: metrics.AucCI | None  # with its unit, resamples and note
    ap: float | None
    roc: dict
    pr: dict
    reliability: dict
    brier: float
    ece: float
    ci_unit: str = "patch"  # what the AUC bootstrap resampled: "patient" where patients are known

    def auc_ci_dict(self) -> dict | None:
        """The interval's JSON form (``core.metrics.AucCI.to_dict``), None without one."""
        return self.auc_ci.to_dict() if self.auc_ci else None


def threshold_free(
    preds: dict[str, pd.DataFrame], n_boot: int = 1000, seed: int = 0, n_bins: int = 10
) -> dict[str, Curves]:
    results = {}
    for name, frame in preds.items():
        known = labelled(frame)
        y, prob = (known[c].to_numpy() for c in ("label", "prob"))
        both = np.unique(y).size == 2
        m = metrics.binary_metrics(y, prob)
        ci = cached_auc_ci(y, prob, metrics.known_groups(known), n_boot=n_boot, seed=seed)
        results[name] = Curves(
            auc=m["auc"],
            auc_ci=ci,
            ap=m["ap"],
            roc=metrics.roc(y, prob) if both else {},
            pr=metrics.pr(y, prob) if both else {},
            reliability=metrics.reliability(y, prob, n_bins=n_bins),
            brier=m["brier"],
            ece=m["ece"],
            ci_unit=ci.unit if ci else metrics.ci_unit(metrics.known_groups(known)),
        )
    return results


@dataclass(frozen=True)
class AtThresholds:
    table: pd.DataFrame  # one row per model: metrics at its threshold
    metrics: dict[str, dict]  # the same, as core.metrics.binary_metrics dicts (JSON-able)
    confusion: dict[str, np.ndarray]  # 2×2 counts per model
    reports: dict[str, dict]  # sklearn classification_report per model
    paired: pd.DataFrame  # one row per pair of models
    risk_coverage: dict[str, dict]  # per model, core.metrics.risk_coverage at its threshold


def _thresholds_for(preds, thresholds) -> dict[str, float]:
    if thresholds is None or isinstance(thresholds, int | float):
        default = metrics.DECISION_THRESHOLD
        return dict.fromkeys(preds, default if thresholds is None else float(thresholds))
    return {name: float(thresholds[name]) for name in preds}


def at_thresholds(preds: dict[str, pd.DataFrame], thresholds=None) -> AtThresholds:
    """Metrics of each model at its threshold (a dict by model name, one float, or None = DECISION_THRESHOLD)."""
    thresholds = _thresholds_for(preds, thresholds)
    by_model, confusion, reports, selective = {}, {}, {}, {}
    for name, frame in preds.items():
        y, prob = (labelled(frame)[c].to_numpy() for c in ("label", "prob"))
        by_model[name] = metrics.binary_metrics(y, prob, thresholds[name])
        confusion[name] = np.asarray(by_model[name]["confusion_matrix"])
        reports[name] = metrics.report(y, prob, thresholds[name])
        selective[name] = metrics.risk_coverage(y, prob, thresholds[name])
    table = pd.DataFrame.from_dict(by_model, orient="index").drop(columns="confusion_matrix")
    table.index.name = "model"
    paired = paired_tests(preds, thresholds)
    return AtThresholds(table, by_model, confusion, reports, paired, selective)


def paired_tests(preds: dict[str, pd.DataFrame], thresholds=None) -> pd.DataFrame:
    """McNemar (at each model's threshold) and DeLong (AUC) for every pair of models, one row
    per pair: ``a_right_b_wrong`` = patches A gets right and B wrong, ``auc_diff`` = AUC A − AUC B
    (``delong_z`` has its sign). Where patients are known and numerous enough
    (``core.metrics.patch_or_patient``) both tests treat patients as clusters
    (``core.metrics.*_clustered``); otherwise McNemar is the exact test on patches,
    ``mcnemar_chi2_cc_p`` its continuity-corrected chi-square, and ``unit_note`` says why
    patches. ``mcnemar_test`` / ``delong_test`` name the test each p-value comes from."""
    thresholds = _thresholds_for(preds, thresholds)
    table = joined(preds)
    y = table["label"].to_numpy()
    unit = metrics.patch_or_patient(y, metrics.known_groups(table))
    rows = []
    for a, b in itertools.combinations(preds, 2):
        prob_a, prob_b = table[f"prob:{a}"].to_numpy(), table[f"prob:{b}"].to_numpy()
        calls = [metrics.predict_labels(p, thresholds[m]) for p, m in ((prob_a, a), (prob_b, b))]
        mc = (
            metrics.mcnemar(y, *calls)
            if unit.groups is None
            else metrics.mcnemar_clustered(y, *calls, unit.groups)
        )
        row = {
            "model_a": a,
            "model_b": b,
            "a_right_b_wrong": mc["b"],
            "a_wrong_b_right": mc["c"],
            "mcnemar_p": mc["p_value"],
            "mcnemar_test": mc["test"],
            "mcnemar_chi2_cc_p": mc.get("p_chi2_cc"),
            "test_unit": unit.name,
            "unit_note": unit.note,
        }
        if np.unique(y).size == 2:
            dl = metrics.paired_delong(y, prob_a, prob_b, unit.groups)
            row.update(
                auc_diff=dl["auc_diff"],
                delong_z=dl["z"],
                delong_p=dl["p_value"],
                delong_test=dl["test"],
            )
        rows.append(row)
    return pd.DataFrame(rows)


def disagreements(
    preds: dict[str, pd.DataFrame],
    thresholds=None,
    kind: str = "disagree_or_all_wrong",
    sort_by: str = "confidence",
) -> pd.DataFrame:
    """Patches where the models disagree and/or all are wrong.

    Adds ``pred:<model>`` and ``confidence`` = mean over models of |P(tumour) − threshold|
    (how sure the models are, each relative to its own threshold) and ``spread`` = max − min
    P(tumour). Sorted descending by ``sort_by`` ("confidence" or "spread"): confident mistakes
    and sharp disagreements first.
    """
    if kind not in DISAGREEMENT_KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(DISAGREEMENT_KINDS)}")
    thresholds = _thresholds_for(preds, thresholds)
    table = joined(preds)
    probs = np.column_stack([table[f"prob:{name}"] for name in preds])
    cuts = np.array([thresholds[name] for name in preds])
    calls = (probs >= cuts).astype(int)
    for k, name in enumerate(preds):
        table[f"pred:{name}"] = calls[:, k]
    disagree = calls.min(axis=1) != calls.max(axis=1)
    all_wrong = (calls != table["label"].to_numpy()[:, None]).all(axis=1)
    keep = {
        "disagree": disagree,
        "all_wrong": all_wrong,
        "disagree_or_all_wrong": disagree | all_wrong,
    }[kind]
    table["confidence"] = np.abs(probs - cuts).mean(axis=1)
    table["spread"] = probs.max(axis=1) - probs.min(axis=1)
    table["all_wrong"] = all_wrong
    return table[keep].sort_values(sort_by, ascending=False, kind="stable").reset_index(drop=True)


def threshold_for_sensitivity(preds: dict[str, pd.DataFrame], min_sensitivity: float) -> dict:
    """Per model, the highest threshold reaching ``min_sensitivity`` (see core.metrics)."""
    return {
        name: metrics.threshold_for_sensitivity(
            labelled(frame)["label"], labelled(frame)["prob"], min_sensitivity
        )
        for name, frame in preds.items()
    }


def metrics_json(
    preds, thresholds=None, n_boot: int = 1000, seed: int = 0, free=None, at=None, conformal=None
) -> dict:
    """One JSON-able object keyed by model: metrics at the threshold, AUC CI (with what it rests
    on), conformal coverage (``conformal``: each model's card field, ``card_conformal``), report,
    and the paired tests against every other model (``free``/``at`` reuse results already
    computed).

    ``paired[other]`` is read from this model's side: A = this model, B = ``other`` (both named
    in ``model_a`` / ``model_b``), so ``auc_diff`` = AUC of this model − AUC of the other and
    ``a_right_b_wrong`` counts this model's wins."""
    free = free or threshold_free(preds, n_boot=n_boot, seed=seed)
    at = at or at_thresholds(preds, thresholds)
    out = {}
    for name in preds:
        row = dict(at.metrics[name])
        row["computed_with"] = dict(preds[name].attrs)  # device and precision (predict_split)
        row.update(interval_fields(free[name].auc_ci, labelled(preds[name])))
        row["patients"] = metrics.patient_level(labelled(preds[name]), row["threshold"])
        row["conformal"] = conformal_coverage(preds[name], (conformal or {}).get(name))
        row["report"] = at.reports[name]
        row["paired"] = _paired_for(at.paired, name)
        out[name] = row
    return out


def conformal_coverage(frame: pd.DataFrame, card_conformal: dict | None) -> dict | None:
    """``core.conformal.coverage`` of one model's predictions (None without card quantiles)."""
    from core.conformal import coverage

    known = labelled(frame)
    y, prob = known["label"].to_numpy(), known["prob"].to_numpy()
    return coverage(y, prob, card_conformal or {}, metrics.known_groups(known))


# What changes sign or swaps when a pair's row is read from model B's side.
_MIRRORED = {"a_right_b_wrong": "a_wrong_b_right", "a_wrong_b_right": "a_right_b_wrong"}
_NEGATED = ("auc_diff", "delong_z")


def _paired_for(paired: pd.DataFrame, name: str) -> dict:
    """``{other: row}`` with every row oriented so that A is ``name`` (see ``metrics_json``)."""
    out = {}
    for _, row in paired.iterrows():
        row = {k: _plain(v) for k, v in row.items()}
        if name == row["model_b"]:
            row = {_MIRRORED.get(k, k): v for k, v in row.items()}
            row["model_a"], row["model_b"] = row["model_b"], row["model_a"]
            row.update({k: -row[k] for k in _NEGATED if row.get(k) is not None})
        if name == row["model_a"]:
            out[row["model_b"]] = row
    return out


def _plain(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def predictions_table(preds, thresholds=None) -> pd.DataFrame:
    """All models' probabilities and calls per patch, unlabelled ones (label -1) included:
    the predictions CSV export. A CSV has no header block, so how each model's column was
    made travels in columns of its own: the threshold of ``pred:``, and the device and
    precision that computed ``prob:`` (``predict_split``'s attrs; "unknown" without them)."""
    thresholds = _thresholds_for(preds, thresholds)
    table = joined(preds, labelled_only=False)
    for name, frame in preds.items():
        table[f"pred:{name}"] = (table[f"prob:{name}"] >= thresholds[name]).astype(int)
        table[f"threshold:{name}"] = thresholds[name]
        for field in ("device", "precision"):
            table[f"{field}:{name}"] = frame.attrs.get(field, "unknown")
    return table


def patient_groups(ds, preds: dict[str, pd.DataFrame]) -> list[str]:
    """Patients (or slides) with coordinates that have patches among the predictions."""
    from core.data.visual import mosaic_groups

    predicted = set(next(iter(preds.values())).get("patient", []))
    return [g for g in mosaic_groups(ds) if g in predicted]


def patient_mosaics(ds, preds: dict[str, pd.DataFrame], patient: str, max_side: int = 900):
    """``{model: uint8 image}``: the patient's slide rebuilt from its patches, each patch tinted
    by that model's P(tumour) (blue 0 → red 1); plus ``"labels"``, tinted by the ground truth."""
    from core.data.visual import overlay_labels, overlay_probs, slide_mosaic

    images = {}
    for name, frame in preds.items():
        frame = frame[frame["patient"] == patient]
        probs = dict(zip(frame["id"].astype(str), frame["prob"], strict=True))
        mosaic = slide_mosaic(ds, patient, probs=probs, max_side=max_side)
        images[name] = overlay_probs(mosaic)
    images["labels"] = overlay_labels(mosaic)
    return images
