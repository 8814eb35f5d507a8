"""Explain: Grad-CAM-family heatmaps of one or more checkpoints on dataset patches or uploads.

UI only: CAMs, overlays, uploads, patch selection and faithfulness all come from core.explain.
Models are loaded once per (path, sha256) with st.cache_resource and never touched outside
core.explain's per-model lock; CAMs of a page of patches are cached with st.cache_data, so the
opacity and colormap controls only redraw.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import streamlit as st

# `streamlit run pages/<page>.py` puts only pages/ on sys.path; make `core` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import config
from core.catalogue import checkpoint_choices, model_names, trained_on_index
from core.config import CLASS_NAMES, TARGETS
from core.data import DatasetEntry, list_datasets
from core.data.visual import page_count, page_of
from core.evaluate import open_dataset_for
from core.explain import (
    CAM_METHODS,
    COLORMAPS,
    OUTCOMES,
    SLOW_METHODS,
    explain_gallery,
    faithfulness_sample,
    faithfulness_table,
    load_uploads,
    overlays_zip,
    select_patches,
)
from core.files import file_sha256
from core.metrics import DECISION_THRESHOLD, called_class
from pages._shared import dataset, ensure_demo_or_warn, loaded_model, session_checkpoints

ALL = "all"
PAGE_SIZES = (4, 8, 16)
SOURCES = ("Dataset patches", "Upload patches")
UPLOAD_TYPES = [
    "png",
    "jpg",
    "jpeg",
    "tif",
    "tiff",
]  # the browser's filter; content is checked in core
LABELS = {ALL: "all", 0: "normal (0)", 1: "tumour (1)"}
GRID_MIN_COLUMNS = 6
TARGET_LABELS = {"pred": "predicted class", "tumour": "tumour", "normal": "normal"}


def dataset_for(path: str, checkpoint: str):
    """The dataset opened with the split ``checkpoint`` was trained on (TP/FP/... use its test)."""
    return open_dataset_for(path, [checkpoint], opener=dataset)[0]


@st.cache_data(show_spinner="Predicting the split (cached on disk afterwards)…", max_entries=16)
def predictions(checkpoint: str, sha: str, data_path: str, split: str):
    from core.evaluate import predict_split

    return predict_split(checkpoint, dataset_for(data_path, checkpoint), split=split)


@st.cache_data(show_spinner="Computing CAMs…", max_entries=32)
def gallery(
    model_keys, images_key, methods, target, aug_smooth, eigen_smooth, tta, _models, _images, _names
):
    return explain_gallery(_models, _images, _names, methods, target, aug_smooth, eigen_smooth, tta)


@st.cache_data(
    show_spinner="Scoring faithfulness (ROAD imputes every image several times)…", max_entries=8
)
def faithfulness(model_keys, sample_key, methods, target, _models, _images, _masks):
    return faithfulness_table(_models, _images, methods, masks=_masks, target=target)


def pick_dataset_patches(first_checkpoint):
    """Dataset, filters and paging -> (images, names, cache key, dataset or None, split)."""
    entries = list_datasets()
    if not entries:
        st.info(f"No datasets under {config.data_root()}; add one or upload patches instead.")
        return None
    entry = st.selectbox(
        "Dataset",
        entries,
        index=trained_on_index(entries, first_checkpoint),  # the data the model learned from
        format_func=DatasetEntry.label,
        key="explain_dataset",
    )
    ds = dataset_for(str(entry.path), str(first_checkpoint))
    if entry.synthetic:
        st.caption(
            "Synthetic demo data: ground-truth tumour masks allow localisation scores below."
        )
    c_split, c_label, c_outcome, c_size = st.columns(4)
    splits = [ALL, *sorted(ds.meta["split"].unique())]
    split = c_split.selectbox(
        "Split", splits, index=splits.index("test") if "test" in splits else 0, key="explain_split"
    )
    label = c_label.selectbox("Label", list(LABELS), format_func=LABELS.get, key="explain_label")
    outcome = c_outcome.selectbox(
        "Outcome",
        [ALL, *OUTCOMES],
        key="explain_outcome",
        help=f"TP/FP/FN/TN of the first selected checkpoint at threshold {DECISION_THRESHOLD} "
        "(predicts the split once).",
    )
    per_page = c_size.selectbox("Per page", PAGE_SIZES, index=1, key="explain_per_page")
    preds = None
    if outcome != ALL:
        preds = predictions(
            str(first_checkpoint), file_sha256(first_checkpoint), str(entry.path), split
        )
    indices = select_patches(
        ds,
        None if split == ALL else split,
        None if label == ALL else label,
        None if outcome == ALL else outcome,
        preds,
    )
    pages = page_count(len(indices), per_page)
    page = st.number_input(
        f"Page (of {pages}; {len(indices)} patches)", 1, pages, 1, key="explain_page"
    )
    shown = page_of(indices, int(page) - 1, per_page)
    names = [str(n) for n in ds.meta["id"].to_numpy()[shown]]
    images = ds.read_batch(shown) if len(shown) else np.zeros((0, *ds.image_size, 3), np.uint8)
    key = f"{entry.path}|{split}|{label}|{outcome}|{','.join(map(str, shown))}"
    return images, names, key, ds, None if split == ALL else split


def pick_uploads(size: int):
    files = st.file_uploader(
        "Upload PNG, JPEG or TIFF patches",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key="explain_uploads",
        help=f"Other sizes are centre-cropped and resized to the first model's {size}×{size} input.",
    )
    pairs = [(f.name, f.getvalue()) for f in files or []]
    patches, errors = load_uploads(pairs, size)
    for error in errors:
        st.error(error)
    for patch in patches:
        if patch.notice:
            st.info(f"{patch.name}: {patch.notice}")
    if not patches:
        return None
    digest = hashlib.sha256(
        b"".join(hashlib.sha256(data).digest() for _, data in pairs)
    ).hexdigest()
    return (
        np.stack([p.image for p in patches]),
        [p.name for p in patches],
        f"upload|{size}|{digest}",
        None,
        None,
    )


def cell_caption(column, i: int) -> str:
    prob = float(column.result.probs[i])
    called = called_class(prob)
    explained = CLASS_NAMES[int(column.result.classes[i])]
    return f"{column.model} · {column.method} — P(tumour) {prob:.3f} → {called}; map of {explained}"


@st.dialog("Enlarged", width="large")
def enlarge(name: str, original, overlays, captions) -> None:
    st.image(original, caption=f"{name} (original)", width="stretch")
    for picture, caption in zip(overlays, captions, strict=True):
        st.image(picture, caption=caption, width="stretch")


def render_grid(result, alpha: float, colormap: str) -> None:
    grid = result.overlays(alpha, colormap)
    n_cols = max(1 + len(result.columns), GRID_MIN_COLUMNS)  # keeps a 1-model grid compact
    heads = st.columns(n_cols)
    heads[0].markdown("**Original**")
    for head, column in zip(heads[1 : 1 + len(result.columns)], result.columns, strict=True):
        head.markdown(f"**{column.model} · {column.method}**")
    for i, (name, image, row) in enumerate(zip(result.names, result.images, grid, strict=True)):
        cells = st.columns(n_cols)
        cells[0].image(image, caption=name, width="stretch")
        captions = [cell_caption(column, i) for column in result.columns]
        for cell, picture, caption in zip(cells[1 : 1 + len(row)], row, captions, strict=True):
            cell.image(picture, caption=caption, width="stretch")
        if cells[0].button("🔍 Enlarge", key=f"explain_enlarge_{i}"):
            enlarge(name, image, row, captions)


def render_faithfulness(
    models, model_keys, methods, target, images, names, images_key, ds, split
) -> None:
    st.subheader("Faithfulness")
    st.caption(
        "ROAD (pytorch-grad-cam): mean change in softmax confidence after imputing the most (MoRF, "
        "lower is better) or least (LeRF, higher is better) relevant pixels; combined = (LeRF − MoRF)/2. "
        "On demo sets, tumour patches with ground-truth masks add the pointing-game hit rate (vs. a "
        "random point) and the share of CAM energy inside the mask. Rank 1 = best within a model."
    )
    size = st.number_input("Sample size", 2, 64, 8, key="explain_faith_n")
    sample = faithfulness_sample(ds, split, int(size), images, images_key)
    st.caption(sample.description)
    request = (model_keys, sample.key, tuple(methods), target)
    if st.button("Compute faithfulness", key="explain_faith_run"):
        st.session_state["explain_faith_request"] = request
    if st.session_state.get("explain_faith_request") != request:
        return
    table = faithfulness(
        model_keys, sample.key, tuple(methods), target, models, sample.images, sample.masks
    )
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button(
        "⬇️ Faithfulness table (CSV)",
        table.to_csv(index=False).encode(),
        "histolens_faithfulness.csv",
        "text/csv",
        key="explain_faith_csv",
    )


st.title("🔥 Explain")
st.warning(config.RESEARCH_NOTICE, icon="⚠️")
ensure_demo_or_warn()

with st.expander("Bring your own checkpoint"):
    uploaded = session_checkpoints("explain_checkpoint_upload")
paths = checkpoint_choices() + uploaded
if not paths:
    st.info(
        f"No checkpoints yet: train one on the Training page, or put .pt files in {config.checkpoints_dir()}."
    )
    st.stop()
by_name = dict(zip(model_names(paths), paths, strict=True))
c_models, c_methods = st.columns(2)
chosen = c_models.multiselect(
    "Checkpoints", list(by_name), default=list(by_name)[:1], key="explain_models"
)
methods = c_methods.multiselect(
    "Methods",
    list(CAM_METHODS),
    default=["gradcam"],
    format_func=lambda m: (
        f"{CAM_METHODS[m].__name__}{' (slow on CPU)' if m in SLOW_METHODS else ''}"
    ),
    key="explain_methods",
)
if not chosen or not methods:
    st.info("Pick at least one checkpoint and one method.")
    st.stop()
try:
    models = {n: loaded_model(str(by_name[n]), file_sha256(by_name[n])) for n in chosen}
except ValueError as err:  # CheckpointError: one line naming the file and the fix
    st.error(str(err))
    st.stop()
model_keys = tuple((n, m.sha256) for n, m in models.items())

c_target, c_alpha, c_cmap = st.columns(3)
target = c_target.radio(
    "Explain class",
    list(TARGETS),
    index=list(TARGETS).index("pred"),
    format_func=TARGET_LABELS.get,
    horizontal=True,
    key="explain_target",
)
alpha = c_alpha.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="explain_alpha")
colormap = c_cmap.selectbox("Colormap", list(COLORMAPS), key="explain_colormap")
c_tta, c_aug, c_eigen = st.columns(3)
tta = c_tta.checkbox("D4 test-time augmentation (8×)", key="explain_tta")
aug_smooth = c_aug.checkbox(
    "aug_smooth", key="explain_aug_smooth", help="pytorch-grad-cam's flip/brightness smoothing"
)
eigen_smooth = c_eigen.checkbox(
    "eigen_smooth", key="explain_eigen_smooth", help="first principal component only"
)

source = st.radio("Patches from", SOURCES, horizontal=True, key="explain_source")
first = next(iter(models.values()))
picked = (
    pick_dataset_patches(by_name[chosen[0]])
    if source == SOURCES[0]
    else pick_uploads(first.card.input_size)
)
if picked is None or not len(picked[0]):
    st.info("No patches to explain: change the filters or upload patches.")
    st.stop()
images, names, images_key, ds, split = picked

result = gallery(
    model_keys,
    images_key,
    tuple(methods),
    target,
    aug_smooth,
    eigen_smooth,
    tta,
    models,
    images,
    names,
)
render_grid(result, alpha, colormap)
st.download_button(
    "⬇️ Shown overlays (PNG zip)",
    overlays_zip(result, alpha, colormap),
    "histolens_overlays.zip",
    "application/zip",
    key="explain_zip",
)
render_faithfulness(models, model_keys, methods, target, images, names, images_key, ds, split)
