"""Compare: 2–4 checkpoints on the same dataset split, side by side.

UI only: widgets in, core.compare / core.evaluate / core.explain out. Predictions are cached on
disk by core.evaluate, so re-opening a comparison does no model forward.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

# `streamlit run pages/<page>.py` puts only pages/ on sys.path; make `core` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import config
from core.calls import describe_call
from core.catalogue import (
    card_conformal,
    card_thresholds,
    checkpoint_choices,
    model_names,
    read_card,
)
from core.compare import (
    DISAGREEMENT_KINDS,
    at_thresholds,
    conformal_coverage,
    content_keys,
    disagreements,
    evaluate_checkpoints,
    metrics_json,
    patient_groups,
    patient_mosaics,
    predictions_table,
    threshold_for_sensitivity,
    threshold_free,
)
from core.conformal import DEFAULT_ALPHA
from core.data import list_datasets
from core.display import calibration_text, display_table, interval_text
from core.evaluate import (
    REPORTED_METRICS,
    labelled,
    open_dataset_for,
    patient_table,
)
from core.figures import (
    confusion_figure,
    figures_html,
    pr_figure,
    reliability_figure,
    risk_coverage_figure,
    roc_figure,
)
from core.metrics import format_ci, patient_level
from pages._shared import (
    dataset,
    ensure_demo_or_warn,
    session_checkpoints,
    shared_model,
)
from pages._shared.inputs import choose_inputs
from pages._shared.robustness_view import robustness_section
from pages._shared.state import SESSION, keep_offered

MAX_MODELS = 4
BOOTSTRAP = 1000
STEP = 0.001  # threshold slider step: untrained or very confident models need fine steps
TABLE_COLUMNS = ["threshold", *REPORTED_METRICS, "n"]
PATCH_PX = 192  # disagreement patches and their CAMs: 2× a 96 px patch, never page-wide
CHART_PX = 290  # three charts side by side from ~920 px of page, one per row on a phone
DISAGREEMENT_DEFAULTS = {
    "compare_show": list(DISAGREEMENT_KINDS)[2],
    "compare_sort": "confidence",
    "compare_patches": 6,
    "compare_cams": True,
}
MATRIX_PX = 300  # one model's confusion matrices; models wrap onto rows on narrow screens


@st.cache_data(show_spinner="Curves and bootstrap CIs…", max_entries=16)
def curves(cache_keys: tuple[str, ...], _preds):
    return threshold_free(_preds, n_boot=BOOTSTRAP, seed=0)


@st.cache_data(show_spinner="Rebuilding the slide…", max_entries=8)
def mosaics(cache_keys: tuple[str, ...], patient: str, _ds, _preds):
    return patient_mosaics(_ds, _preds, patient)


@st.cache_data(show_spinner="Grad-CAM per model…", max_entries=32)
def cam_overlays(cache_keys: tuple[str, ...], ids: tuple[str, ...], thresholds, _models, _images):
    """Grad-CAM of the class each model calls at the page's thresholds."""
    from core.explain import explain_gallery

    return explain_gallery(
        _models, _images, list(ids), ["gradcam"], thresholds=dict(thresholds)
    ).overlays()


def threshold_key(name: str) -> str:
    return f"compare_threshold::{name}"


def apply_sensitivity_target(preds, target: float, shared: bool) -> None:
    """Button callback: move every model's threshold slider to its sensitivity ≥ target point."""
    # rounded down to the slider's step, so the sensitivity stays at or above the target
    chosen = {
        name: math.floor(pick["threshold"] / STEP) * STEP
        for name, pick in threshold_for_sensitivity(preds, target).items()
    }
    for name, value in chosen.items():
        st.session_state[threshold_key(name)] = value
    if shared:  # one slider: the lowest threshold keeps every model at or above the target
        st.session_state[threshold_key("shared")] = min(chosen.values())


def predictions(chosen, entry, split: str, tta: bool):
    """(dataset opened with the checkpoints' training split, {name: predictions}); stops the
    page with one line on bad input."""
    try:
        ds, split_warnings = open_dataset_for(
            str(entry.path), [str(p) for p in chosen], opener=dataset
        )
    except ValueError as err:  # DatasetError / CheckpointError: one clear line
        st.error(str(err))
        st.stop()
    for warning in split_warnings:
        st.warning(warning, icon="⚠️")
    bar = st.progress(0.0, text="Evaluating…")
    try:
        preds = evaluate_checkpoints(
            chosen,
            ds,
            split=split,
            tta=tta,
            loader=shared_model,
            progress=lambda done, total: bar.progress(
                min(done / max(total, 1), 1.0), text=f"Evaluating… {done}/{total} patches"
            ),
        )
    except (ValueError, OSError) as err:
        bar.empty()
        st.error(str(err))
        st.stop()
    bar.empty()
    if any(frame["label"].ge(0).sum() == 0 for frame in preds.values()):
        st.warning(f"Split {split!r} of {entry.name} has no labelled patches: nothing to score.")
        st.stop()
    return ds, preds


def threshold_section(names, preds, defaults: dict[str, float]) -> dict[str, float]:
    """Sliders that start at each checkpoint's own threshold (its card; 0.5 for older ones)."""
    st.subheader("Thresholds")
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    shared = c1.toggle("One shared threshold", key="compare_shared", persist_state=SESSION)
    st.session_state.setdefault("compare_target", 0.9)
    target = c2.number_input(
        "Target sensitivity", 0.5, 1.0, step=0.01, key="compare_target", persist_state=SESSION
    )
    c3.button(
        f"Choose thresholds for sensitivity ≥ {target:.2f}",
        on_click=apply_sensitivity_target,
        args=(preds, target, shared),
    )
    if shared:
        st.session_state.setdefault(threshold_key("shared"), min(defaults.values()))
        value = st.slider(
            "Threshold (all models)",
            0.0,
            1.0,
            step=STEP,
            format="%.3f",
            key=threshold_key("shared"),
            persist_state=SESSION,  # hidden while per-model sliders show; comes back as it was
        )
        return dict.fromkeys(names, value)
    for name in names:
        st.session_state.setdefault(threshold_key(name), math.floor(defaults[name] / STEP) * STEP)
    return {
        name: col.slider(
            f"Threshold · {name}",
            0.0,
            1.0,
            step=STEP,
            format="%.3f",
            key=threshold_key(name),
            persist_state=SESSION,
        )
        for name, col in zip(names, st.columns(len(names)), strict=True)
    }


def confusion_section(names, thresholds, at) -> None:
    st.subheader("Confusion matrices")
    row_of_models = st.container(horizontal=True)
    for name in names:
        with row_of_models.container(width=MATRIX_PX):
            row = at.table.loc[name]
            st.markdown(f"**{name}** @ {thresholds[name]:.3f}")
            for metric, col_ in zip(("sensitivity", "specificity"), st.columns(2), strict=True):
                value = row[metric]
                col_.metric(metric.capitalize(), "n/a" if pd.isna(value) else f"{value:.3f}")
            counts = confusion_figure(at.confusion[name], f"{name}: counts")
            st.plotly_chart(counts, key=f"cm::{name}")
            st.plotly_chart(
                confusion_figure(at.confusion[name], f"{name}: row-normalised", normalised=True),
                key=f"cmn::{name}",
            )


def curves_section(free, at) -> list:
    st.subheader("ROC, precision–recall and calibration")
    figures = [roc_figure(free, at=at), pr_figure(free), reliability_figure(free)]
    figures.append(risk_coverage_figure(at))
    charts = st.container(horizontal=True)
    for fig in figures:
        charts.plotly_chart(fig, width=CHART_PX)
    return figures


def calibration_section(names, preds, paths) -> None:
    """Each card's calibration map (with the guard's reason when it changed it) and how often
    its conformal sets hold the true label here."""
    alpha = f"{DEFAULT_ALPHA:g}"
    rows = []
    for name in names:
        card = read_card(paths[name])
        cover = conformal_coverage(preds[name], card.conformal)
        row = {
            "model": name,
            "calibration map": calibration_text(card.calibration, card.calibration_note),
        }
        if cover:  # one column per figure: one long text cell was cut off at the page's edge
            held = cover[alpha]
            row |= {
                "coverage per patch": held["coverage"],
                "target": held["target"],
                "mean over patients": held["patient_mean_coverage"],
                **{f"{kind} sets": share for kind, share in held["sets"].items()},
            }
        rows.append(row)
    st.markdown(
        f"**Calibration and conformal sets** (fitted on each model's validation split; sets at "
        f"α = {alpha}: a set holds every class the model cannot rule out at that error rate)"
    )
    st.dataframe(display_table(pd.DataFrame(rows).round(3)), hide_index=True, width="stretch")


def metrics_section(names, free, at, preds, paths) -> None:
    st.subheader("Metrics")
    table = at.table[TABLE_COLUMNS].astype(float).round(3)
    table.insert(2, "auc_95ci", [format_ci(free[n].auc_ci) for n in names])
    table.insert(3, "ci_unit", [free[n].ci_unit for n in names])
    # width="stretch": a table wider than the page scrolls inside it instead of being cut off
    st.dataframe(display_table(table), width="stretch")
    st.caption(
        "AUC 95% CI: " + "; ".join(f"**{n}** {interval_text(free[n].auc_ci_dict())}" for n in names)
    )
    st.caption(
        "Paired tests on the same patches, A vs B: McNemar counts the patches A gets right and B "
        "wrong (and the reverse) at the thresholds above; DeLong tests AUC A − AUC B. Each row "
        "names its tests: with 10 or more patients (2 or more with tumour and with normal "
        "patches) they treat each patient as a cluster, as the AUC interval resamples whole "
        "patients (patches of one patient are not independent); otherwise patches, and the unit "
        "note says why."
    )
    st.dataframe(display_table(at.paired.round(3)), hide_index=True, width="stretch")
    calibration_section(names, preds, paths)
    by_patient = {n: patient_level(labelled(preds[n]), at.metrics[n]["threshold"]) for n in names}
    if all(by_patient.values()):
        st.markdown(
            "**Patient level** (a patient is tumour when any patch is; scored by the max P)"
        )
        st.dataframe(display_table(pd.DataFrame(by_patient).T), width="stretch")
    with st.expander("Classification report per model (as the seeds print it)"):
        for name, col in zip(names, st.columns(len(names)), strict=True):
            col.markdown(f"**{name}**")
            col.dataframe(
                {k: v for k, v in at.reports[name].items() if isinstance(v, dict)},
                width="stretch",
            )


def patients_section(ds, preds, names, thresholds, keys) -> None:
    """IDC (and PCam with coordinates): each model's probability mosaic of one patient."""
    groups = patient_groups(ds, preds)
    if not groups:
        return
    st.subheader("Patients")
    keep_offered("compare_patient", groups, groups[0], context=str(ds.root))
    patient = st.selectbox("Patient / slide", groups, key="compare_patient", persist_state=SESSION)
    pictures = mosaics(keys, patient, ds, preds)
    for (label, image), col in zip(pictures.items(), st.columns(len(pictures)), strict=True):
        caption = (
            "ground truth (red tumour, green normal)"
            if label == "labels"
            else f"{label}: mosaic, P(tumour) blue 0 → red 1"
        )
        col.image(image, caption=caption)
    with st.expander("Per-patient table"):
        for name in names:
            st.markdown(f"**{name}**")
            table = patient_table(preds[name], thresholds[name]).round(3)
            st.dataframe(display_table(table), hide_index=True)


def disagreements_section(ds, preds, paths, thresholds, keys) -> None:
    st.subheader("Disagreements")
    names = list(paths)
    for key, default in DISAGREEMENT_DEFAULTS.items():
        st.session_state.setdefault(key, default)
    d1, d2, d3, d4 = st.columns(4)
    kind = d1.selectbox(
        "Show",
        list(DISAGREEMENT_KINDS),
        format_func=DISAGREEMENT_KINDS.get,
        key="compare_show",
        persist_state=SESSION,
    )
    sort_by = d2.selectbox(
        "Sort by",
        ["confidence", "spread"],
        help="confidence = mean |P − threshold|; spread = max − min P",
        key="compare_sort",
        persist_state=SESSION,
    )
    page_size = d3.number_input("Patches", 1, 32, key="compare_patches", persist_state=SESSION)
    show_cams = d4.toggle("Grad-CAM per model", key="compare_cams", persist_state=SESSION)
    rows = disagreements(preds, thresholds, kind=kind, sort_by=sort_by)
    st.caption(f"{len(rows)} patches; showing the first {min(page_size, len(rows))}.")
    shown = rows.head(int(page_size))
    if not len(shown):
        return
    images = ds.read_batch(shown["index"].to_numpy())
    overlays = None
    if show_cams:
        models = {n: shared_model(paths[n]) for n in names}
        cuts = tuple(sorted(thresholds.items()))
        overlays = cam_overlays(keys, tuple(shown["id"]), cuts, models, images)
    # Patches keep a fixed size and wrap. Without CAMs the patches share rows; with CAMs each
    # patch is a card of its own row whose images wrap inside it (1 + 4 images of 192 px are
    # wider than a narrow page; side by side, the cards squeezed them over each other).
    patches = st.container(horizontal=not overlays)
    for k, (_, row) in enumerate(shown.iterrows()):
        truth = "tumour" if row["label"] == 1 else "normal"
        card = patches.container(
            border=True, horizontal=True, width="stretch" if overlays else "content"
        )
        calls = {n: describe_call(row[f"prob:{n}"], thresholds[n]) for n in names}
        listed = "" if overlays else "".join(f"\n{n}: {call}" for n, call in calls.items())
        card.image(images[k], caption=f"{row['id']} · true {truth}{listed}", width=PATCH_PX)
        for name, picture in zip(names, overlays[k] if overlays else [], strict=False):
            card.image(picture, caption=f"{name} · Grad-CAM — {calls[name]}", width=PATCH_PX)


def export_section(entry, split, preds, paths, thresholds, free, at, figures) -> None:
    st.subheader("Export")
    stem = f"{entry.name.replace('/', '_')}_{split}"
    e1, e2, e3 = st.columns(3)
    e1.download_button(
        "Predictions CSV",
        lambda: predictions_table(preds, thresholds).to_csv(index=False),
        file_name=f"predictions_{stem}.csv",
        mime="text/csv",
        on_click="ignore",
    )
    e2.download_button(
        "Metrics JSON",
        lambda: json.dumps(
            metrics_json(
                preds, thresholds, free=free, at=at, conformal=card_conformal(list(paths.values()))
            ),
            indent=2,
            default=float,
        ),
        file_name=f"metrics_{stem}.json",
        mime="application/json",
        on_click="ignore",
    )
    e3.download_button(
        "Figures (HTML)",
        lambda: figures_html(figures),
        file_name=f"figures_{stem}.html",
        mime="text/html",
        on_click="ignore",
    )


st.title("⚖️ Compare models")
st.caption(f"{config.RESEARCH_NOTICE} Same patches, same split, several checkpoints.")
ensure_demo_or_warn()
entries = list_datasets()
with st.sidebar.expander("Bring your own checkpoint"):
    uploaded = session_checkpoints("compare_checkpoint_upload")
checkpoints = checkpoint_choices() + uploaded
if not entries or len(checkpoints) < 2:
    st.info(
        "Comparing needs a dataset and at least two checkpoints. Train some with "
        "`python -m core train --data data/demo/pcam --out runs/NAME` or on the Training page; "
        f"checkpoints are read from `{config.checkpoints_dir()}` and the runs folder."
    )
    st.stop()
chosen, entry, split = choose_inputs(
    "compare", entries, checkpoints, (2, MAX_MODELS), verb="compared"
)
tta = st.sidebar.toggle(
    "D4 test-time augmentation",
    help="average over the 8 rotations/flips (8× slower)",
    key="compare_tta",
    persist_state=SESSION,
)
if len(chosen) < 2:
    st.info("Pick at least two checkpoints in the sidebar.")
    st.stop()
ds, preds = predictions(chosen, entry, split, tta)
paths = dict(zip(model_names(chosen), chosen, strict=True))
thresholds = threshold_section(list(paths), preds, card_thresholds(chosen))
keys = content_keys(preds)  # no second look at the data files
free = curves(keys, preds)
at = at_thresholds(preds, thresholds)
confusion_section(list(paths), thresholds, at)
figures = curves_section(free, at)
metrics_section(list(paths), free, at, preds, paths)
patients_section(ds, preds, list(paths), thresholds, keys)
disagreements_section(ds, preds, paths, thresholds, keys)
robustness_section(ds, paths, split)
export_section(entry, split, preds, paths, thresholds, free, at, figures)
