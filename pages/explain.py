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
from core.calls import called_class, describe_call
from core.catalogue import (
    card_problem,
    checkpoint_choices,
    checkpoint_label,
    model_names,
    read_card,
    readable,
    trained_on_index,
)
from core.config import CLASS_NAMES, TARGETS
from core.data import DatasetEntry, exclusions, list_datasets
from core.data.visual import page_count, page_of
from core.display import display_table
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
from pages._shared import (
    dataset,
    ensure_demo_or_warn,
    say_not_calibrated,
    session_checkpoints,
    shared_model,
)
from pages._shared.sanity import render_sanity
from pages._shared.stain_view import stain_slider_section
from pages._shared.state import SESSION, keep_offered, kept_uploads

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
CELL_PX = 160  # one patch or heatmap in the grid; cells wrap, however many models × methods
SMALL_CELL_PX = 112  # beyond four heatmaps per patch
ENLARGED_PX = 320  # the enlarge dialog: two images per row, never a page-wide stack
# Controls whose default is not their first option (the rest start at their first option).
DEFAULTS = {
    "explain_methods": ["gradcam"],
    "explain_target": "pred",
    "explain_alpha": 0.5,
    "explain_per_page": 8,
    "explain_page": 1,
    "explain_faith_n": 8,
}
TARGET_LABELS = {"pred": "predicted class", "tumour": "tumour", "normal": "normal"}


def dataset_for(path: str, checkpoint: str):
    """The dataset opened with the split ``checkpoint`` was trained on (TP/FP/... use its test)."""
    return open_dataset_for(path, [checkpoint], opener=dataset)[0]


@st.cache_data(show_spinner="Predicting the split (cached on disk afterwards)…", max_entries=16)
def predictions(checkpoint: str, sha: str, data_path: str, split: str, exclusions_revision: str):
    """The split's predictions (``exclusions_revision``: a key only; an exclusion renumbers the
    patches, so predictions made before it must not be served after it)."""
    from core.evaluate import predict_split

    return predict_split(
        checkpoint, dataset_for(data_path, checkpoint), split=split, loader=shared_model
    )


@st.cache_data(show_spinner="Computing CAMs…", max_entries=32)
def gallery(
    model_keys, images_key, methods, target, aug_smooth, eigen_smooth, tta, _models, _images, _names
):
    return explain_gallery(_models, _images, _names, methods, target, aug_smooth, eigen_smooth, tta)


@st.cache_data(
    show_spinner="Scoring faithfulness (ROAD imputes every image several times)…", max_entries=8
)
def faithfulness(model_keys, sample_key, methods, target, _models, _images, _masks):
    # inside the cached function: a cache hit replays an empty slot, no bar
    bar = st.progress(0.0, text="Scoring faithfulness…")
    table = faithfulness_table(
        _models,
        _images,
        methods,
        masks=_masks,
        target=target,
        progress=lambda done, total: bar.progress(
            done / total, text=f"Scoring faithfulness… {done}/{total} model × method pairs"
        ),
    )
    bar.empty()
    return table


def pick_dataset_patches(checkpoints):
    """Dataset, filters and paging -> (images, names, cache key, dataset or None, split)."""
    first_checkpoint = checkpoints[0]
    entries = list_datasets()
    if not entries:
        st.info(f"No datasets under {config.data_root()}; add one or upload patches instead.")
        return None
    trained_on = entries[trained_on_index(entries, first_checkpoint)]  # the data it learned from
    keep_offered("explain_dataset", entries, trained_on, name=lambda e: e.name)
    entry = st.selectbox(
        "Dataset",
        entries,
        format_func=DatasetEntry.label,
        key="explain_dataset",
        persist_state=SESSION,
    )
    ds = dataset_for(str(entry.path), str(first_checkpoint))
    # another format, another split, synthetic training data on real patches: say so
    for warning in open_dataset_for(str(entry.path), list(map(str, checkpoints)), opener=dataset)[
        1
    ]:
        st.warning(warning, icon="⚠️")
    if entry.synthetic:
        st.caption(
            "Synthetic demo data: ground-truth tumour masks allow localisation scores below."
        )
    c_split, c_label, c_outcome, c_size = st.columns(4)
    splits = [ALL, *sorted(ds.meta["split"].unique())]
    keep_offered("explain_split", splits, "test" if "test" in splits else ALL)
    split = c_split.selectbox("Split", splits, key="explain_split", persist_state=SESSION)
    label = c_label.selectbox(
        "Label", list(LABELS), format_func=LABELS.get, key="explain_label", persist_state=SESSION
    )
    threshold = read_card(first_checkpoint).threshold  # learnt on validation; 0.5 if older
    outcome = c_outcome.selectbox(
        "Outcome",
        [ALL, *OUTCOMES],
        key="explain_outcome",
        persist_state=SESSION,
        help=f"TP/FP/FN/TN of the first selected checkpoint at its threshold {threshold:.3f} "
        "(from its model card; predicts the split once).",
    )
    per_page = c_size.selectbox(
        "Per page", PAGE_SIZES, key="explain_per_page", persist_state=SESSION
    )
    preds = None
    if outcome != ALL:
        preds = predictions(
            str(first_checkpoint),
            file_sha256(first_checkpoint),
            str(entry.path),
            split,
            exclusions.revision(entry.path),
        )
    indices = select_patches(
        ds,
        None if split == ALL else split,
        None if label == ALL else label,
        None if outcome == ALL else outcome,
        preds,
        threshold,
    )
    pages = page_count(len(indices), per_page)
    if st.session_state["explain_page"] > pages:  # fewer pages since: the last one
        st.session_state["explain_page"] = pages
    page = st.number_input(
        f"Page (of {pages}; {len(indices)} patches)",
        1,
        pages,
        key="explain_page",
        persist_state=SESSION,
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
    pairs = kept_uploads("explain_uploads", files)
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
    """ "model · method — P(tumour) 0.934 → tumour" (+ the class mapped, when it is not the
    called one): the calibrated probability and the call at the card's threshold."""
    result = column.result
    prob = float(result.probs[i])
    explained = CLASS_NAMES[int(result.classes[i])]
    mapped = "" if explained == called_class(prob, result.threshold) else f"; map of {explained}"
    return f"{column.model} · {column.method} — {describe_call(prob, result.threshold)}{mapped}"


def thresholds_caption(models) -> str:
    """Which threshold each checkpoint's calls use (the card's, as on every other page)."""
    cuts = ", ".join(f"{name} {loaded.card.threshold:.3f}" for name, loaded in models.items())
    return (
        "P(tumour) is each checkpoint's calibrated probability, as on Compare and in the CLI; "
        f"a patch is called tumour at or above its card's threshold ({cuts})."
    )


@st.dialog("Enlarged", width="large")
def enlarge(name: str, original, overlays, captions) -> None:
    pictures = st.container(horizontal=True)
    pictures.image(original, caption=f"{name} (original)", width=ENLARGED_PX)
    for picture, caption in zip(overlays, captions, strict=True):
        pictures.image(picture, caption=caption, width=ENLARGED_PX)


def render_grid(result, alpha: float, colormap: str) -> None:
    """One card per patch (original + one heatmap per model × method) at a fixed size; cards
    and their images wrap to the page's width instead of stretching to a fixed column count."""
    grid = result.overlays(alpha, colormap)
    width = CELL_PX if len(result.columns) <= 4 else SMALL_CELL_PX
    cards = st.container(horizontal=True)
    for i, (name, image, row) in enumerate(zip(result.names, result.images, grid, strict=True)):
        card = cards.container(border=True, width="content")
        pictures = card.container(horizontal=True)
        pictures.image(image, caption=name, width=width)
        captions = [cell_caption(column, i) for column in result.columns]
        for picture, caption in zip(row, captions, strict=True):
            pictures.image(picture, caption=caption, width=width)
        if card.button("🔍 Enlarge", key=f"explain_enlarge_{i}"):
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
    size = st.number_input("Sample size", 2, 64, key="explain_faith_n", persist_state=SESSION)
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
    # rank beside the model: the last columns of a wide table scroll out of sight
    first = ["model", "rank", "method"]
    table = table[first + [c for c in table.columns if c not in first]]
    st.dataframe(display_table(table.round(3)), hide_index=True, width="stretch")
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
for key, default in DEFAULTS.items():
    st.session_state.setdefault(key, default)
usable = readable(paths)
keep_offered("explain_models", list(by_name), [n for n, p in by_name.items() if p in usable][:1])
# Full width: two long checkpoint labels in half a page pushed the first chip out of sight.
chosen = st.multiselect(
    "Checkpoints",
    list(by_name),
    format_func=lambda n: checkpoint_label(by_name[n]),
    key="explain_models",
    persist_state=SESSION,
)
methods = st.multiselect(
    "Methods",
    list(CAM_METHODS),
    format_func=lambda m: (
        f"{CAM_METHODS[m].__name__}{' (slow on CPU)' if m in SLOW_METHODS else ''}"
    ),
    key="explain_methods",
    persist_state=SESSION,
)
for name in [n for n in chosen if card_problem(by_name[n])]:
    st.error(f"{name} cannot be used: {card_problem(by_name[name])}")
    chosen = [n for n in chosen if n != name]
say_not_calibrated({by_name[n]: n for n in chosen})
if not chosen or not methods:
    st.info("Pick at least one checkpoint and one method.")
    st.stop()
try:
    models = {n: shared_model(by_name[n]) for n in chosen}
except ValueError as err:  # CheckpointError: one line naming the file and the fix
    st.error(str(err))
    st.stop()
model_keys = tuple((n, m.sha256) for n, m in models.items())

c_target, c_alpha, c_cmap = st.columns(3)
target = c_target.radio(
    "Explain class",
    list(TARGETS),
    format_func=TARGET_LABELS.get,
    horizontal=True,
    key="explain_target",
    persist_state=SESSION,
)
alpha = c_alpha.slider(
    "Heatmap opacity", 0.0, 1.0, step=0.05, key="explain_alpha", persist_state=SESSION
)
colormap = c_cmap.selectbox(
    "Colormap", list(COLORMAPS), key="explain_colormap", persist_state=SESSION
)
c_tta, c_aug, c_eigen = st.columns(3)
tta = c_tta.checkbox("D4 test-time augmentation (8×)", key="explain_tta", persist_state=SESSION)
aug_smooth = c_aug.checkbox(
    "aug_smooth",
    key="explain_aug_smooth",
    help="pytorch-grad-cam's flip/brightness smoothing",
    persist_state=SESSION,
)
eigen_smooth = c_eigen.checkbox(
    "eigen_smooth",
    key="explain_eigen_smooth",
    help="first principal component only",
    persist_state=SESSION,
)

source = st.radio(
    "Patches from", SOURCES, horizontal=True, key="explain_source", persist_state=SESSION
)
first = next(iter(models.values()))
picked = (
    pick_dataset_patches([by_name[n] for n in chosen])
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
st.caption(thresholds_caption(models))
render_grid(result, alpha, colormap)
st.download_button(
    "⬇️ Shown overlays (PNG zip)",
    overlays_zip(result, alpha, colormap),
    "histolens_overlays.zip",
    "application/zip",
    key="explain_zip",
)
stain_slider_section(
    models, model_keys, methods, target, images, names, images_key, alpha, colormap
)
render_faithfulness(models, model_keys, methods, target, images, names, images_key, ds, split)
render_sanity(models, model_keys, methods, target, images, names, images_key, ds)
