"""Explain's "Can I trust these maps?" section (UI only; every number comes from core.sanity)."""

from __future__ import annotations

import streamlit as st

from core.display import display_table
from core.errors import InputError
from core.explain import SLOW_METHODS, overlay
from core.figures import sanity_figure
from core.sanity import (
    CONTROLS,
    DEFAULT_SEEDS,
    KENDALL_WARN_BELOW,
    MODES,
    PASS_MAX_ABS_RHO,
    UNIFORM_CENTRE_SHARE,
    VERDICT_RULE,
    data_randomisation,
    max_patches,
    sanity_check,
    shown_sample,
    shuffled_label_checkpoint,
    shuffled_label_run,
    start_shuffled_label_run,
)
from pages._shared import public_mode, shared_model
from pages._shared.state import SESSION

METRICS = {"abs_spearman": "|Spearman ρ|", "ssim": "SSIM", "spearman": "Spearman ρ (signed)"}
EXAMPLE_PX = 112
EXPLAINED = (
    "**Model-parameter randomisation** (Adebayo et al., 2018): the model's weights are re-drawn "
    "stage by stage from the head down to the stem (cascading) — or one stage at a time "
    "(independent) — and each method's map is compared with the trained model's. A map that "
    "stays the same when everything the model learnt is gone describes the image, not the "
    "model. BatchNorm is randomised too (γ, β drawn around identity, running statistics "
    "re-measured on these patches), not reset to identity. Similarity is Spearman's ρ of "
    "|map| and the 2-D SSIM; bands are 95 % intervals over patches and randomisation seeds. "
    "Two controls share the axes: an edge map of the patch (Sobel), which ignores the model and "
    "stays at 1, and RandomCAM with a fixed seed, which reads the CAM layer through random "
    "weights: 1 until the randomisation reaches that layer, then near 0. The verdict reads "
    "|ρ|, not ρ: a map anti-correlated with the trained one still follows the image with its "
    "sign flipped (EigenCAM's component has no fixed sign)."
)


@st.cache_data(show_spinner="Comparing with the shuffled-label model…", max_entries=8)
def _data_test(model_key, twin_key, sample_key, methods, target, _trained, _twin, _sample):
    return data_randomisation(_trained, _twin, _sample, methods, target)


def render_sanity(models, model_keys, methods, target, images, names, images_key, ds) -> None:
    """The section: options, the run button, then per model the curves, verdicts, example maps,
    localisation, score agreement and the data randomisation test."""
    st.subheader("Can I trust these maps?")
    st.caption(EXPLAINED)
    public_mode()  # copies a TOML HISTOLENS_PUBLIC secret into the environment max_patches reads
    cap = max_patches()
    if len(images) < 2:
        st.info("The sanity check needs at least two patches: show more above.")
        return
    slow = [m for m in methods if m in SLOW_METHODS]
    c_seeds, c_mode, c_slow, c_road = st.columns(4)
    n_seeds = c_seeds.number_input(
        "Randomisation seeds",
        1,
        5,
        len(DEFAULT_SEEDS),
        key="explain_sanity_seeds",
        persist_state=SESSION,
    )
    both = c_mode.checkbox(
        "Independent too",
        key="explain_sanity_independent",
        persist_state=SESSION,
        help="also re-draw one stage at a time (doubles the time)",
    )
    with_slow = bool(slow) and c_slow.checkbox(  # offered only when one of them is picked
        "Include ScoreCAM/AblationCAM",
        key="explain_sanity_slow",
        persist_state=SESSION,
        help="left out by default: one forward pass per channel at every depth takes minutes",
    )
    road = c_road.checkbox(
        "ROAD in the agreement",
        key="explain_sanity_road",
        persist_state=SESSION,
        help="ROAD imputes every patch 8 times per method: several times the rest of the check",
    )
    chosen = tuple(m for m in methods if with_slow or m not in SLOW_METHODS)
    if slow and not with_slow:
        st.caption(f"Left out (slow on a CPU): {', '.join(slow)}.")
    if not chosen:
        st.info("Pick at least one method that is not ScoreCAM/AblationCAM, or include them.")
        return
    shown = images[:cap]
    sample = shown_sample(ds, names[:cap], shown, f"{images_key}|{cap}")
    st.caption(
        f"Sample: the {sample.description} shown above"
        + (f" (the first {cap}: the limit here)" if len(images) > cap else "")
        + ". The maps explain the class chosen above."
    )
    request = (model_keys, sample.key, chosen, target, int(n_seeds), both, road)
    if st.button("Run the sanity checks", key="explain_sanity_run"):
        st.session_state["explain_sanity_request"] = request
    if st.session_state.get("explain_sanity_request") != request:
        return
    for label, loaded in models.items():
        report = _checked(label, loaded, sample, chosen, target, int(n_seeds), both, road)
        if report is not None:
            _render_report(report, both)
            _render_data_test(label, loaded, chosen, target, sample)


def _checked(label, loaded, sample, methods, target, n_seeds, both, road):
    """The report of one model (from core's disk cache after the first run), with a progress
    bar while it is computed; None after showing the one-line error."""
    bar = st.progress(0.0, text=f"Sanity checks of {label}…")
    try:
        return sanity_check(
            loaded,
            sample,
            methods,
            MODES if both else MODES[:1],
            tuple(range(n_seeds)),
            target,
            road=road,
            label=label,
            progress=lambda done, total: bar.progress(
                done / total, text=f"Sanity checks of {label}… {done}/{total} map passes"
            ),
        )
    except InputError as err:
        st.error(str(err))
        return None
    finally:
        bar.empty()


def _render_report(report, both: bool) -> None:
    st.markdown(f"#### {report.model}")
    c_metric, c_mode = st.columns(2)
    metric = c_metric.radio(
        "Similarity",
        list(METRICS),
        format_func=METRICS.get,
        horizontal=True,
        key=f"explain_sanity_metric_{report.model}",
    )
    mode = c_mode.radio(
        "Randomisation",
        MODES if both else MODES[:1],
        horizontal=True,
        key=f"explain_sanity_mode_{report.model}",
    )
    st.plotly_chart(sanity_figure(report.curves, metric, mode), key=f"sanity_{report.model}")
    st.caption(
        f"**Verdict rule** ({METRICS['abs_spearman']}, threshold {PASS_MAX_ABS_RHO}): {VERDICT_RULE}."
    )
    st.dataframe(display_table(report.verdicts.round(3)), hide_index=True, width="stretch")
    for note in report.notes:
        st.caption(f"ℹ️ {note}")
    _render_examples(report)
    if not report.scores.empty and len(report.scores.columns) > 1:
        st.markdown(
            "**Localisation and the other scores** (share of mass in the centre ninth of a "
            f"uniform map: {UNIFORM_CENTRE_SHARE:.3f})"
        )
        st.dataframe(display_table(report.scores.round(3)), hide_index=True, width="stretch")
    if report.agreement.empty:
        st.caption("Score agreement needs three methods or more and two scores.")
    else:
        st.markdown("**Do the scores agree?** Kendall's τ between their rankings of the methods")
        st.dataframe(display_table(report.agreement.round(3)), hide_index=True, width="stretch")
        if report.disagreement:
            st.warning(
                f"The scores rank the methods differently (τ < {KENDALL_WARN_BELOW}): no method "
                "is best on this model and data.",
                icon="⚠️",
            )


def _render_examples(report) -> None:
    names = list(report.verdicts["method"])
    method = st.selectbox(
        "Maps of",
        names,
        key=f"explain_sanity_example_{report.model}",
        help="the trained model's maps (top) and the fully randomised model's (bottom, first seed)",
    )
    k = names.index(method)
    for title, maps in (
        ("trained", report.example_trained),
        ("randomised", report.example_randomised),
    ):
        row = st.container(horizontal=True)
        for i, image in enumerate(report.example_images):
            row.image(overlay(image, maps[k][i]), caption=f"{title} · {i + 1}", width=EXAMPLE_PX)
    if method in CONTROLS:
        st.caption("A control, not a method: see the caption above.")


def _render_data_test(label, loaded, methods, target, sample) -> None:
    st.markdown("**Data randomisation**: the same recipe trained on shuffled labels")
    twin = shuffled_label_run(loaded.card)
    checkpoint = shuffled_label_checkpoint(twin)
    if checkpoint is not None:
        twin_model = shared_model(checkpoint)
        table = _data_test(
            loaded.sha256,
            twin_model.sha256,
            sample.key,
            methods,
            target,
            loaded,
            twin_model,
            sample,
        )
        rows = table[table["metric"] == "abs_spearman"]
        st.dataframe(
            display_table(rows[["method", "mean", "low", "high", "verdict"]].round(3)),
            hide_index=True,
            width="stretch",
        )
        st.caption(f"|ρ| to the maps of {twin.name}; same rule as above.")
    elif twin is not None:
        st.caption(f"The shuffled-label run {twin.name} is {twin.state}: see the Training page.")
    elif public_mode():
        st.caption("Not on a public server: it trains a model.")
    elif st.button(
        "Train the shuffled-label twin (background run)", key=f"explain_sanity_twin_{label}"
    ):
        try:
            run = start_shuffled_label_run(loaded.card)
        except InputError as err:
            st.error(str(err))
        else:
            st.success(f"Started {run.name}; follow it on the Training page.")
