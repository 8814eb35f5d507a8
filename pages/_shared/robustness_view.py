"""Compare's stain-robustness section (UI only; the sweep is core.robustness).

The sweep runs in the background (``core.robustness.SweepJob``): a 64-patch preview without CIs
first, then the requested sample with patient-resampled CIs. A ``st.fragment`` polls its state
every second while it runs; the job lives in the session, so other pages and reruns leave it
going. Models come from the app's shared model cache, loaded here in the script thread (the
job's thread never calls Streamlit).
"""

from __future__ import annotations

import json

import streamlit as st

from core.display import display_table
from core.figures import robustness_figures
from core.robustness import PREVIEW_PATCHES, PUBLIC_MAX_PATCHES, SHIFTS, SweepJob, strength_label
from pages._shared import public_mode, shared_model
from pages._shared.state import SESSION

JOB = "compare_robustness_job"  # (request, SweepJob) of this session
DEFAULT_PATCHES = 512
CHART_PX = 290
POLL = 1.0  # seconds between looks at a running sweep


def robustness_section(ds, paths: dict, split: str) -> None:
    """Shift family, strengths and sample size; a Run button; the running or finished sweep."""
    st.subheader("Stain robustness: will it hold at another hospital?")
    st.caption(
        "The same patches with their stain moved (another lab's staining, another scanner), at "
        "graded strengths: each model's AUC, balanced accuracy at its card's threshold, ECE, and "
        "the share of calls that flip. Each patch is moved by a draw seeded by its id, the same "
        "for every model. Runs in the background; a preview on "
        f"{PREVIEW_PATCHES} patches comes first."
    )
    c_shift, c_strengths, c_n = st.columns([1, 2, 1])
    family = c_shift.selectbox(
        "Shift", list(SHIFTS), key="compare_robustness_shift", persist_state=SESSION
    )
    offered = list(SHIFTS[family].strengths)
    strengths = c_strengths.multiselect(
        "Strengths",
        offered,
        default=offered,
        key=f"compare_robustness_strengths::{family}",
        persist_state=SESSION,
        help=SHIFTS[family].label,
    )
    public = public_mode()
    st.session_state.setdefault(
        "compare_robustness_n", PUBLIC_MAX_PATCHES if public else DEFAULT_PATCHES
    )
    n = c_n.number_input(
        "Patches (0 = all)",
        0,
        PUBLIC_MAX_PATCHES if public else 10**7,
        step=64,
        key="compare_robustness_n",
        persist_state=SESSION,
        help=f"On this public server: at most {PUBLIC_MAX_PATCHES}, one sweep at a time."
        if public
        else None,
    )
    request = (tuple(map(str, paths.values())), str(ds.root), ds.manifest_id, split, family,
               tuple(sorted(strengths)), int(n))  # fmt: skip
    held = st.session_state.get(JOB)
    if st.button("Run the sweep", key="compare_robustness_run", disabled=not strengths):
        if held is not None:
            held[1].cancel()
        held = (request, start_job(ds, paths, split, family, sorted(strengths), int(n) or None))
        st.session_state[JOB] = held
    if held is None:
        return
    if held[0] != request:
        st.caption("The sweep below was run with other choices; press Run for these.")
    running = held[1].state().running
    st.fragment(run_every=POLL if running else None)(sweep_panel)(held[1], running)


def start_job(ds, paths: dict, split: str, family: str, strengths, n) -> SweepJob:
    from core.device import resolve_device  # imports torch: only when a sweep starts

    device = resolve_device("auto")
    models = {str(p): shared_model(p, device) for p in paths.values()}
    return SweepJob(
        list(models), ds, split, family, strengths, n,
        loader=lambda path, _device: models[str(path)],
    )  # fmt: skip


def sweep_panel(job: SweepJob, was_running: bool) -> None:
    state = job.state()
    if was_running and not state.running:
        st.rerun()  # the whole page: this panel stops polling
    if state.running:
        stage = "Preview" if state.stage == "preview" else "Sweep"
        share = state.done / state.total if state.total else 0.0
        st.progress(share, text=f"{stage}: {state.done}/{state.total} patch predictions…")
        if st.button("Cancel the sweep", key="compare_robustness_cancel"):
            job.cancel()
    if state.stage == "failed":
        st.error(state.error)
    elif state.stage == "cancelled":
        st.info("Sweep cancelled.")
    sweep = state.result or state.preview
    if sweep is not None:
        render_sweep(sweep, preview=state.result is None)


def render_sweep(sweep, preview: bool) -> None:
    if preview:
        st.caption(f"Preview on {sweep.n} patches, no confidence intervals; the sweep goes on.")
    st.markdown(f"**{sweep.summary}**")
    for note in sweep.notes:
        st.caption(f"Note: {note}.")
    charts = st.container(horizontal=True)
    for fig in robustness_figures(sweep):
        charts.plotly_chart(fig, width=CHART_PX)
    table = sweep.table.copy()
    table["strength"] = [strength_label(s) for s in table["strength"]]
    st.dataframe(display_table(table.round(3)), hide_index=True, width="stretch")
    if not sweep.paired.empty:
        st.caption(
            "Paired AUC difference between models at each strength, with its 95% CI "
            f"({sweep.paired['test'].iloc[0]})."
        )
        st.dataframe(display_table(sweep.paired.round(4)), hide_index=True, width="stretch")
    if not preview:
        st.download_button(
            "Robustness JSON",
            json.dumps(sweep.to_json(), indent=2),
            file_name=f"robustness_{sweep.family}_{sweep.split}.json",
            mime="application/json",
            key="compare_robustness_json",
            on_click="ignore",
        )
