"""Datasets: summary, class balance, a filtered gallery, colour statistics and slide mosaics.

UI only: every number and picture comes from core.data (readers, summarize, core.data.visual,
core.figures). Datasets are opened once per (path, seed) with st.cache_resource; pages of
the gallery, colour statistics and mosaics are cached with st.cache_data so paging is instant.
Only folders inside the data root (HISTOLENS_DATA) can be opened.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

# `streamlit run pages/<page>.py` puts only pages/ on sys.path; make `core` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import config
from core.data import DatasetError, list_datasets, summarize
from core.data.check import check_progress, exclude_unreadable, start_check, stop_check
from core.data.exclusions import revision
from core.data.registry import MAX_SEED
from core.data.visual import (
    colour_stats,
    gallery_page,
    mask_overlay,
    mosaic_groups,
    overlay_labels,
    slide_mosaic,
    why_empty,
)
from core.figures import class_balance_figure, colour_histogram_figure
from pages._shared import dataset, ensure_demo_or_warn, public_mode
from pages._shared.state import SESSION, keep_offered

GRID = 8  # 8×8 gallery
PER_PAGE = GRID * GRID
THUMB_PX = 88  # gallery thumbnails keep this size and wrap: ~9 a row at 1400 px, ~5 at 800
ALL = "all"
LABEL_NAMES = {0: "normal (0)", 1: "tumour (1)", -1: "unlabelled"}


# Every cached function below takes ``excluded``, the exclusion list's revision, as a key: an
# exclusion renumbers the patches, so nothing computed before it may be replayed after it.


@st.cache_data(show_spinner=False, max_entries=64)
def summary(path: str, seed: int, excluded: str) -> dict:
    return summarize(dataset(path, seed), details=True)


@st.cache_data(show_spinner=False, max_entries=256)
def page_of_gallery(path: str, seed: int, excluded: str, split, label, patient, page: int):
    return gallery_page(dataset(path, seed), split, label, patient, page, PER_PAGE)


def with_progress(text: str, compute):
    """Run ``compute(progress_callback)`` under a progress bar that disappears when done.
    Called inside the cached functions below, so a cache hit replays an empty slot."""
    bar = st.progress(0.0, text=text)
    result = compute(lambda fraction: bar.progress(min(float(fraction), 1.0), text=text))
    bar.empty()
    return result


@st.cache_data(show_spinner=False, max_entries=32)
def colour_statistics(path: str, seed: int, excluded: str, n: int):
    return with_progress(
        "Reading the sample…",
        lambda progress: colour_stats(dataset(path, seed), n=n, seed=seed, progress=progress),
    )


@st.cache_data(show_spinner=False, max_entries=32)
def mosaic(path: str, seed: int, excluded: str, patient: str):
    return with_progress(
        "Rebuilding the slide…",
        lambda progress: slide_mosaic(dataset(path, seed), patient, progress=progress),
    )


def literal(text: str) -> str:
    """Escape Markdown so messages with globs like ``camelyonpatch_*.h5`` show as written."""
    return re.sub(r"([\\`*_~\[\]])", r"\\\1", text)


def choose_path() -> Path | None:
    """The dataset folder picked in the sidebar; None (with an error shown) if not allowed."""
    entries = list_datasets()
    if entries:
        keep_offered("datasets_entry", entries, entries[0], name=lambda e: e.name)
    with st.sidebar:
        st.subheader("Dataset")
        broken = st.session_state.setdefault("datasets_broken", {})
        entry = st.selectbox(
            "Dataset",
            entries,
            format_func=lambda e: (
                f"⚠ {e.label()} — cannot be opened" if str(e.path) in broken else e.label()
            ),
            key="datasets_entry",
            on_change=reset_page,
            persist_state=SESSION,
        )
        typed = (
            ""  # public mode: only the datasets listed under the data root, no typed paths
            if public_mode()
            else st.text_input(
                "…or a folder under the data root",
                key="datasets_path",
                help=f"Relative to {config.data_root()} (nothing outside it can be opened).",
                persist_state=SESSION,
            )
        )
    if typed.strip():
        try:
            path = config.folder_in_data_root(typed)
        except ValueError as err:
            st.error(literal(str(err)))
            return None
        st.sidebar.caption("Using the typed folder; clear it to pick from the list again.")
        return path
    if entry is None:
        st.info(f"No datasets under {config.data_root()}. Run `python -m core demo`.")
        return None
    return entry.path


def summary_card(info: dict) -> None:
    if info["synthetic"]:
        st.warning("**Synthetic demo data**: painted tissue, not patients.", icon="🧪")
    row = st.container(horizontal=True, gap="medium")  # wraps on narrow screens, never truncates
    row.metric("Format", info["format"].upper(), width="content")
    row.metric("Patches", f"{info['n']:,}", width="content")
    patients = "—" if info["patients"] is None else info["patients"]
    row.metric("Patients / slides", patients, width="content")
    row.metric("Patch size", "×".join(map(str, info["image_size"])), width="content")
    row.metric(
        "Edge patches", info["edge_patches"], help="smaller than the patch size", width="content"
    )
    if info["excluded"]:
        row.metric(
            "Excluded",
            info["excluded"],
            help="unreadable when checked: left out of every page and run until their files "
            f"change (list: {info['exclusions']})",
            width="content",
        )
    table = pd.DataFrame(
        {
            split: {
                "patches": c["n"],
                "normal (0)": c["labels"]["0"],
                "tumour (1)": c["labels"]["1"],
            }
            for split, c in info["splits"].items()
        }
    ).T
    st.dataframe(table, width="content")
    st.caption(f"Split manifest `{info['manifest_id']}`")
    for note in info["notes"]:
        st.info(note, icon="ℹ️")
    if info["problems"]:
        with st.expander(f"⚠️ {len(info['problems'])} problem(s) found while indexing"):
            for problem in info["problems"]:
                st.markdown(f"- {problem}")


CHECK_REFRESH = "1s"


def check_section(path: str, seed: int, ds) -> None:
    """Read every patch in a background thread (core.data.check): this page only starts it,
    polls it while it runs, and offers to exclude what it found."""
    st.button(
        "Check every patch",
        key="datasets_check",
        on_click=start_check,
        args=(path, seed),
        help="Reads every patch of every split as training does, in the background, and lists "
        "the unreadable ones (also: `python -m core data check PATH`).",
    )
    progress = check_progress(path)
    if progress is None:
        return
    if progress.running:
        check_running(path)
    elif progress.error:
        st.error(literal(progress.error))
    else:
        check_result(progress.report, ds)


@st.fragment(run_every=CHECK_REFRESH)
def check_running(path: str) -> None:
    progress = check_progress(path)
    if not progress.running:
        st.rerun()  # the whole page: the result, and the data it changes
    fraction = progress.done / progress.total if progress.total else 0.0
    st.progress(fraction, text=f"Reading every patch… {progress.done:,} of {progress.total:,}")
    st.button("Stop the check", key="datasets_check_stop", on_click=stop_check, args=(path,))


def check_result(report, ds) -> None:
    took = f"{report.n:,} patches read in {report.seconds:.1f} s"
    if report.clean:
        st.success(f"Every patch reads ({took}).")
        return
    st.error(f"{len(report.unreadable)} unreadable patch(es) ({took}).")
    rows = report.to_dict()["unreadable"]
    st.dataframe(pd.DataFrame(rows, columns=["split", "id", "reason"]), hide_index=True)
    if {u.id for u in report.unreadable} <= set(ds.excluded):
        st.caption("Excluded: every page and run leaves them out until their files change.")
        return
    failed = st.session_state.pop("datasets_exclude_error", None)
    if failed:
        st.error(literal(failed))
    if public_mode():
        st.caption(
            "Excluding is off on a public deployment (it would change the data for every "
            "visitor): run `python -m core data check PATH --exclude` on your machine."
        )
        return
    st.button(
        "Exclude them from every page and run",
        key="datasets_exclude",
        on_click=exclude,
        args=(report,),
        help="Writes the list kept with the dataset's cache; a patch comes back once its file "
        "changes (replace it, then check again).",
    )


def exclude(report) -> None:
    try:
        exclude_unreadable(report)
    except OSError as err:  # a read-only or full cache folder
        st.session_state["datasets_exclude_error"] = f"Could not write the exclusion list: {err}"
        return
    reset_page()
    # Other pages' in-memory results (Explain's predictions) are stored by patch position:
    # positions change now, so none may be replayed.
    st.cache_data.clear()


def reset_page() -> None:
    st.session_state["gallery_page"] = 1
    st.session_state.pop("gallery_selected", None)


def gallery_filters(ds, info: dict):
    """(split, label, patient) from three select boxes; None means no filter. Their options
    follow the dataset: a choice the new one does not offer goes back to "all", visibly."""
    cols = st.columns(3)
    labels = sorted(ds.meta["label"].unique().tolist(), reverse=True)
    patients = sorted(ds.meta["patient"].dropna().unique().tolist())
    options = {
        "gallery_split": [ALL, *info["splits"]],
        "gallery_label": [ALL, *labels],
        "gallery_patient": [ALL, *patients],
    }
    for key, offered in options.items():
        keep_offered(key, offered, ALL, context=str(ds.root))
    split = cols[0].selectbox(
        "Split",
        options["gallery_split"],
        key="gallery_split",
        on_change=reset_page,
        persist_state=SESSION,
    )
    label = cols[1].selectbox(
        "Label",
        options["gallery_label"],
        format_func=lambda v: LABEL_NAMES.get(v, v),
        key="gallery_label",
        on_change=reset_page,
        persist_state=SESSION,
    )
    patient = (
        cols[2].selectbox(
            "Patient / slide",
            options["gallery_patient"],
            key="gallery_patient",
            on_change=reset_page,
            persist_state=SESSION,
        )
        if patients
        else ALL
    )
    return (None if v == ALL else v for v in (split, label, patient))


def select_patch(i: int) -> None:
    st.session_state["gallery_selected"] = i


def gallery(path: str, seed: int, ds, info: dict) -> None:
    split, label, patient = gallery_filters(ds, info)
    excluded = revision(path)
    first = page_of_gallery(path, seed, excluded, split, label, patient, 0)
    state = st.session_state
    state["gallery_page"] = min(state.get("gallery_page", 1), first.n_pages)
    page = st.number_input(
        f"Page (of {first.n_pages})", 1, first.n_pages, key="gallery_page", persist_state=SESSION
    )
    shown = page_of_gallery(path, seed, excluded, split, label, patient, int(page) - 1)
    tag = " synthetic" if info["synthetic"] else ""
    st.caption(f"Showing {len(shown.indices)} of {shown.n_matching:,}{tag} patches")
    reason = why_empty(ds, split, label, patient)
    if reason:
        st.info(reason)
    grid, detail = st.columns([3, 1])
    thumbs = grid.container(horizontal=True)
    for k, i in enumerate(map(int, shown.indices)):
        cell = thumbs.container(width=THUMB_PX, gap=None)
        cell.image(
            shown.images[k], caption=LABEL_NAMES[int(ds.meta.at[i, "label"])], width=THUMB_PX
        )
        cell.button(
            "",
            icon=":material/zoom_in:",
            help="View this patch larger, with its details",
            key=f"zoom_{i}",
            on_click=select_patch,
            args=(i,),
            width="stretch",
        )
    with detail:
        patch_detail(ds, info, st.session_state.get("gallery_selected"))


def patch_detail(ds, info: dict, i: int | None) -> None:
    if i is None or i >= len(ds):
        st.caption("Click 🔍 under a patch to enlarge it.")
        return
    image = ds.read(i)
    kind = "Synthetic patch" if info["synthetic"] else "Patch"
    st.markdown(f"**{kind} #{i}** `{ds.meta.at[i, 'id']}`")
    st.image(image, width="stretch")  # fits the detail column
    mask = ds.mask(i)
    if mask is not None:
        st.image(
            mask_overlay(image, mask), width="stretch", caption="ground-truth tumour mask (red)"
        )
    row = {k: v for k, v in ds.meta.iloc[i].to_dict().items() if not pd.isna(v)}  # no "None"
    row["label"] = LABEL_NAMES[int(row["label"])]
    row["size"] = "×".join(map(str, image.shape[:2]))
    st.dataframe(pd.Series({k: str(v) for k, v in row.items()}, name="value"), width="stretch")


def colour_section(path: str, seed: int) -> None:
    st.session_state.setdefault("colour_n", 256)
    n = st.select_slider(
        "Patches sampled", [64, 128, 256, 512, 1024], key="colour_n", persist_state=SESSION
    )
    stats = colour_statistics(path, seed, revision(path), int(n))
    cols = st.columns(2)
    cols[0].dataframe(
        pd.DataFrame({"mean": stats.mean.round(1), "std": stats.std.round(1)}, index=list("RGB")),
        width="content",
    )
    cols[1].metric("Near-white background patches", f"{stats.white_fraction:.1%}")
    st.plotly_chart(colour_histogram_figure(stats), key="colour_hist")
    st.caption(f"{stats.n} patches drawn with seed {seed}.")


def mosaic_section(path: str, seed: int, ds) -> None:
    groups = mosaic_groups(ds)
    if not groups:
        st.caption("No patient or slide coordinates in this dataset (HCD has none).")
        return
    keep_offered("mosaic_patient", groups, groups[0], context=path)
    patient = st.selectbox("Patient / slide", groups, key="mosaic_patient", persist_state=SESSION)
    built = mosaic(path, seed, revision(path), patient)
    st.session_state.setdefault("mosaic_labels", True)
    show_labels = st.toggle(
        "Overlay labels (red tumour, green normal)", key="mosaic_labels", persist_state=SESSION
    )
    st.image(overlay_labels(built) if show_labels else built.image, width="content")
    st.caption(
        f"{built.n_patches} patches at scale {built.scale:.2f}. Predicted probabilities are "
        "overlaid on the Compare page."
    )


st.title("🗂️ Datasets")
st.caption(config.RESEARCH_NOTICE)
ensure_demo_or_warn()

chosen = choose_path()
if chosen is None:
    st.stop()
seed = int(st.session_state.get("datasets_seed", 0))
try:
    ds = dataset(str(chosen), seed)
    info = summary(str(chosen), seed, revision(chosen))
except DatasetError as err:
    # marked in the select box from now on, so a broken set is never a silent default
    if str(chosen) not in st.session_state["datasets_broken"]:
        st.session_state["datasets_broken"][str(chosen)] = str(err)
        st.rerun()
    fix = (
        "Clear the typed folder in the sidebar, or type another one."
        if st.session_state.get("datasets_path", "").strip()
        else "Pick another dataset in the sidebar."
    )
    st.error(literal(str(err)) + "  \n" + fix)
    st.stop()
with st.sidebar:
    if ds.seeded_split:
        st.number_input("Split seed", 0, MAX_SEED, key="datasets_seed", persist_state=SESSION)
    else:
        st.caption(f"{ds.format.upper()} ships its own train/valid/test split: no seed to set.")

summary_card(info)
check_section(str(chosen), seed, ds)
sections = {
    "Gallery": lambda: gallery(str(chosen), seed, ds, info),
    "Class balance": lambda: st.plotly_chart(class_balance_figure(info), key="balance"),
    "Colour statistics": lambda: colour_section(str(chosen), seed),
    "Slide mosaic": lambda: mosaic_section(str(chosen), seed, ds),
}
# Lazy tabs: only the open one runs (colour statistics read a sample of patches and a mosaic
# rebuilds a slide: computing all four made the first open 2-3× slower). Switching reruns.
# st.tabs takes no persist_state, and Streamlit drops its state on a visit to another page: the
# open tab is copied aside and put back before the tabs are drawn again (not as their
# ``default``: a changed default makes them a new widget, which opens on that default).
if "datasets_tab" not in st.session_state and "datasets_tab_kept" in st.session_state:
    st.session_state["datasets_tab"] = st.session_state["datasets_tab_kept"]
tabs = st.tabs(list(sections), key="datasets_tab", on_change="rerun")
st.session_state["datasets_tab_kept"] = st.session_state["datasets_tab"]
for tab, section in zip(tabs, sections.values(), strict=True):
    if not tab.open:
        continue
    with tab:
        try:  # a damaged patch spoils its section only: one line, the other tabs go on
            section()
        except DatasetError as err:
            st.error(literal(str(err)))
