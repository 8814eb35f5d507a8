"""Embeddings: a whole split as a map of what 1–2 models see, side by side on the same patches.

UI only: core.embed computes (and caches on disk) features, maps, colourings and the selection
table; core.figures draws the WebGL scatter; core.explain the Grad-CAMs of selected patches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run pages/<page>.py` puts only pages/ on sys.path; make `core` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import config
from core.calls import describe_call
from core.catalogue import checkpoint_choices, model_names, read_card
from core.data import list_datasets
from core.embed import (
    AXES_NOTE,
    MAP_CAP,
    METHODS,
    colour_options,
    colourings,
    embedding_map,
    rows_from_selection,
    selection_table,
    warm_umap,
)
from core.evaluate import open_dataset_for, split_fingerprint
from core.figures import embedding_figure
from core.files import file_sha256
from pages._shared import dataset, ensure_demo_or_warn, shared_model
from pages._shared.inputs import choose_inputs

MAX_MODELS = 2
GALLERY_MAX = 12  # patches shown with Grad-CAMs; the CSV holds the whole selection
METHOD_HELP = (
    "PCA: a fast linear preview. UMAP (umap-learn, seeded): the field's standard; 30,000 "
    "patches take about half a minute of CPU after their features (longer on a busy machine); "
    "maps are cached on disk."
)


@st.cache_data(show_spinner="Grad-CAM per model…", max_entries=16)
def cam_overlays(keys: tuple[str, ...], ids: tuple[str, ...], _models, _images):
    from core.explain import explain_gallery

    return explain_gallery(_models, _images, list(ids), ["gradcam"]).overlays()


st.title("🗺️ Embeddings")
st.caption(
    f"{config.RESEARCH_NOTICE} Each point is a patch, placed by the features a model feeds its "
    "classifier: clusters of errors, label noise, slides that form their own island."
)

ensure_demo_or_warn()
entries = list_datasets()
checkpoints = checkpoint_choices()
if not entries or not checkpoints:
    st.info(
        "A map needs a dataset and a checkpoint. Train one on the Training page, or bring a "
        "notebook's weights with `python -m core import --weights FILE --arch NAME --out CKPT.pt`."
    )
    st.stop()

chosen, entry, split = choose_inputs("embed", entries, checkpoints, (1, MAX_MODELS), "mapped")
with st.sidebar:
    method = st.radio("Map", METHODS[::-1], horizontal=True, help=METHOD_HELP)
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, help="UMAP's seed and the sample's"))
    cap = int(st.number_input("Points per map (cap)", 1000, 200_000, MAP_CAP, step=1000))

if not chosen:
    st.info("Pick one or two checkpoints in the sidebar.")
    st.stop()
try:
    ds, split_warnings = open_dataset_for(str(entry.path), [str(p) for p in chosen], opener=dataset)
except ValueError as err:  # DatasetError / CheckpointError: one clear line
    st.error(str(err))
    st.stop()
for warning in split_warnings:
    st.warning(warning, icon="⚠️")

if not st.session_state.get("embed_drawn"):  # torch and UMAP load only from here on
    st.button(
        "Draw the maps",
        type="primary",
        key="embed_draw",
        on_click=st.session_state.update,
        kwargs={"embed_drawn": True},
    )
    st.caption(
        "Each map takes one pass of the model over the split (features before its classifier) "
        "and a 2-D reduction: seconds for the demo, minutes for tens of thousands of patches on "
        "a CPU. Both are kept on disk, so a map drawn once comes back at once; after this click "
        "the page draws maps for the rest of the session."
    )
    st.stop()
if method == "pca":  # UMAP's first fit compiles for 10-25 s: do it while the user looks at PCA
    warm_umap()
names = model_names(chosen)
paths = dict(zip(names, chosen, strict=True))
bar = st.empty()


def progress(done: int, total: int) -> None:
    bar.progress(min(done / max(total, 1), 1.0), text=f"Features… {done}/{total} patches")


fingerprint = split_fingerprint(ds, split)  # the data files' state: one look for both maps
# what the selection's CAMs depend on: the models and the patches' files (rewritten in place,
# the same ids are other pixels)
keys = (str(entry.path), fingerprint, *(file_sha256(path) for path in paths.values()))
try:  # computed once per checkpoint × split × method × seed × cap, then read from disk
    with st.spinner(f"{method.upper()} map…"):
        maps = {
            name: embedding_map(
                str(path), ds, split, method, seed, cap, progress, fingerprint=fingerprint
            )
            for name, path in paths.items()
        }
except (ValueError, OSError) as err:
    st.error(str(err))
    st.stop()
finally:
    bar.empty()

first = next(iter(maps.values()))
st.info(AXES_NOTE, icon="ℹ️")
if first.note:
    st.warning(first.note, icon="✂️")
thresholds = {name: read_card(path).threshold for name, path in paths.items()}
has_patients = "patient" in first.frame and first.frame["patient"].notna().any()
c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
by = c1.selectbox("Colour by", colour_options(len(maps), has_patients), key="embed_colour")
c2.caption(
    "Calls at each card's threshold: "
    + ", ".join(f"{name} {threshold:.3f}" for name, threshold in thresholds.items())
)
colours = colourings(maps, by, thresholds)

selected: set[int] = set()
for column, (name, emap) in zip(st.columns(len(maps)), maps.items(), strict=True):
    figure = embedding_figure(emap, colours[name], f"{name}<br>{len(emap.frame):,} patches")
    event = column.plotly_chart(
        figure, key=f"embed_map::{name}", on_select="rerun", selection_mode=("box", "lasso")
    )
    selected.update(rows_from_selection(event.selection.get("points", [])))

# -- selection ------------------------------------------------------------------------------------
st.subheader("Selected patches")
groups = sorted(set(colours[names[0]].values.tolist())) if not colours[names[0]].continuous else []
group = st.selectbox(
    "…or every patch of one colour group",
    ["(box/lasso selection on a map)", *groups],
    key="embed_group",
)
if group in groups:
    selected = set(map(int, (colours[names[0]].values == group).nonzero()[0]))
rows = sorted(selected)
if not rows:
    st.caption("Draw a box or a lasso on a map (toolbar, top right) to list those patches here.")
    st.stop()
table = selection_table(maps, rows, thresholds)
st.download_button(
    f"Selected ids ({len(rows):,}) as CSV",
    table.to_csv(index=False).encode(),
    file_name=f"selection-{entry.name}-{split}.csv",
    mime="text/csv",
)
shown = table.head(GALLERY_MAX)
if len(table) > GALLERY_MAX:
    st.caption(f"Showing the first {GALLERY_MAX} of {len(table):,} selected patches.")
images = ds.read_batch(shown["index"].to_numpy())
models = {name: shared_model(path) for name, path in paths.items()}
overlays = cam_overlays(keys, tuple(shown["id"]), models, images)
for k, row in shown.iterrows():
    cells = st.columns(1 + len(names))
    truth = {1: "tumour", 0: "normal"}.get(int(row["label"]), "unlabelled")
    cells[0].image(images[k], caption=f"{row['id']} · true {truth}", width="stretch")
    for cell, name, picture in zip(cells[1:], names, overlays[k], strict=True):
        call = describe_call(row[f"prob {name}"], thresholds[name])
        cell.image(picture, caption=f"{name} · Grad-CAM — {call}", width="stretch")
