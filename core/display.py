"""How numbers and table headers read to a person: one place for every page's tables.

Tables keep machine column names (``road_morf``, ``mcnemar_p``) in core and in every CSV/JSON
export; pages show them through ``display_table``, which renames the headers and writes
p-values in scientific notation, so a tiny p never prints as a screen of zeros.
"""

from __future__ import annotations

import math

import pandas as pd

P_FLOOR = 1e-10  # below this a p-value only says "far beyond any threshold"

COLUMN_LABELS = {
    # metrics
    "auc": "AUC",
    "auc_95ci": "AUC 95% CI",
    "ci_unit": "CI unit",
    "ci_note": "CI note",
    "ap": "AP",
    "f1": "F1",
    "ppv": "PPV",
    "npv": "NPV",
    "ece": "ECE",
    "n": "patches",
    # paired tests
    "model_a": "model A",
    "model_b": "model B",
    "a_right_b_wrong": "A right, B wrong",
    "a_wrong_b_right": "A wrong, B right",
    "mcnemar_p": "McNemar p",
    "test_unit": "test unit",
    "unit_note": "unit note",
    "mcnemar_test": "McNemar test",
    "delong_test": "DeLong test",
    "mcnemar_chi2_cc_p": "McNemar p (χ², corrected)",
    "auc_diff": "AUC A − B",
    "delong_z": "DeLong z",
    "delong_p": "DeLong p",
    # faithfulness (arrows: which way is better)
    "road_morf": "ROAD MoRF ↓",
    "road_lerf": "ROAD LeRF ↑",
    "road_combined": "ROAD combined ↑",
    "pointing_hit_rate": "pointing-game hit rate ↑",
    "random_point_rate": "random-point rate",
    "energy_in_mask": "CAM energy in mask ↑",
    "mean_rank": "mean rank",
}


def column_label(name: str) -> str:
    """``road_morf`` -> "ROAD MoRF ↓"; names without a label just lose their underscores."""
    return COLUMN_LABELS.get(name, name.replace("_", " "))


def format_p(p: float | None) -> str:
    """0.042 -> "0.042"; 3.2e-05 -> "3.2e-05"; anything below 1e-10 -> "< 1e-10"."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    if p < P_FLOOR:
        return f"< {P_FLOOR:.0e}"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


MISSING = "n/a"  # an undefined figure (one patient's AUC with one class): Streamlit shows "None"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy for the screen: p-value columns (``*_p``) as text, undefined figures as "n/a"
    (a column holding one becomes text throughout: Arrow takes no column of numbers and
    words), headers for people."""
    shown = table.copy()
    for column in shown.columns:
        if str(column).endswith("_p"):
            shown[column] = [format_p(p) for p in shown[column]]
        elif shown[column].isna().any():
            shown[column] = [_cell(v) for v in shown[column]]
    return shown.rename(columns=lambda c: column_label(str(c)))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.4g}" if isinstance(value, float) else str(value)


UNIT_PLURAL = {"patch": "patches", "patient": "patients"}


def p_text(test: str, p: float | None) -> str:
    """A p-value with the test that gave it: "DeLong, patches p=0.012"."""
    return f"{test} p={format_p(p)}"


def interval_text(ci: dict | None, digits: int = 3) -> str:
    """An AUC interval from its JSON form (``core.metrics.AucCI.to_dict``) with what it rests
    on: "0.812–0.871 (95% percentile bootstrap over patients, stratified by …)"; "n/a"."""
    if not ci:
        return "n/a"
    rests_on = [
        f"{ci['level']:.0%} {ci['method']} over {UNIT_PLURAL[ci['unit']]}, "
        f"stratified by {ci['stratified_by']}"
    ]
    if ci["unusable_resamples"]:
        rests_on.append(
            f"{ci['unusable_resamples']:,} of {ci['n_boot']:,} resamples held one class "
            "and were left out"
        )
    if ci["note"]:
        rests_on.append(ci["note"])
    return f"{ci['low']:.{digits}f}–{ci['high']:.{digits}f} ({'; '.join(rests_on)})"


def coverage_text(row: dict) -> str:
    """One error rate of ``core.conformal.coverage``: "coverage 0.903 per patch (target 0.900);
    sets: tumour 41%, normal 52%, both 7%, empty 0%"."""
    text = f"coverage {row['coverage']:.3f} per {row['unit']} (target {row['target']:.3f}"
    if row.get("patient_mean_coverage") is not None:
        text += f"; mean over patients {row['patient_mean_coverage']:.3f}"
    sets = ", ".join(f"{kind} {share:.0%}" for kind, share in row["sets"].items())
    return f"{text}); sets: {sets}"


def calibration_text(calibration: dict, note: str = "") -> str:
    """A card's map: "platt a=0.52, b=-0.61", "identity", with the guard's reason if any."""
    method = calibration.get("method", "identity")
    text = (
        method
        if method == "identity"
        else (f"{method} a={calibration['a']:.3g}, b={calibration['b']:.3g}")
    )
    return f"{text} ({note})" if note else text
