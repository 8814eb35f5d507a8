"""Explain's stain slider (UI only; the work is core.robustness.patch_under_shift).

One shown patch, its stain moved by a chosen family and strength: the shifted image, each
model's calibrated P(tumour) and call before and after, and each method's map before and after
with its stability (Spearman's ρ between the two maps).
"""

from __future__ import annotations

import math

import streamlit as st

from core.explain import overlay
from core.robustness import SHIFTS, patch_under_shift
from pages._shared.state import SESSION, keep_offered

CELL_PX = 160


@st.cache_data(show_spinner="Shifting the stain and recomputing the maps…", max_entries=32)
def shifted_patch(
    model_keys, images_key, name, family, strength, methods, target, _models, _image, _pool
):
    return patch_under_shift(
        _models, _image, name, family, strength, methods, target, reference_images=_pool
    )


def stain_slider_section(
    models, model_keys, methods, target, images, names, images_key, alpha, colormap
) -> None:
    st.subheader("Stain slider: what another lab's stain does to one patch")
    # off by default: it recomputes every chosen map twice for the patch it shows
    if not st.toggle("Show the stain slider", key="explain_stain_on", persist_state=SESSION):
        return
    c_patch, c_shift, c_strength = st.columns(3)
    keep_offered("explain_stain_patch", names, names[0])
    name = c_patch.selectbox("Patch", names, key="explain_stain_patch", persist_state=SESSION)
    family = c_shift.radio(
        "Shift", list(SHIFTS), horizontal=True, key="explain_stain_shift", persist_state=SESSION
    )
    offered = SHIFTS[family].strengths
    key = f"explain_stain_strength::{family}"
    keep_offered(key, offered, offered[len(offered) // 2])
    strength = c_strength.select_slider(
        "Strength", offered, key=key, persist_state=SESSION, help=SHIFTS[family].label
    )
    k = names.index(name)
    moved = shifted_patch(
        model_keys, images_key, name, family, strength, tuple(methods), target,
        models, images[k], images,
    )  # fmt: skip
    st.caption(
        SHIFTS[family].label
        + (" (reference: the shown patches' own mean stain)" if family == "reinhard" else "")
    )
    pictures = st.container(horizontal=True)
    pictures.image(images[k], caption=f"{name} (original)", width=CELL_PX)
    note = " — too little tissue: passed through unchanged" if moved.untreated else ""
    pictures.image(
        moved.gallery.images[1], caption=f"{family} at {strength:g}{note}", width=CELL_PX
    )
    for model, (before, after) in moved.probs.items():
        was, now = moved.calls(model)
        flip = " — **the call flips**" if was != now else ""
        st.markdown(
            f"**{model}**: P(tumour) {before:.3f} → {after:.3f}; call {was} → {now} at its "
            f"threshold {moved.thresholds[model]:.3f}{flip}"
        )
    maps = st.container(horizontal=True)
    for column in moved.gallery.columns:
        rho = moved.stability[column.model, column.method]
        said = "a flat map" if math.isnan(rho) else f"Spearman ρ {rho:.2f} with before"
        for image, cam, when in zip(
            moved.gallery.images, column.result.cams, ("before", f"after ({said})"), strict=True
        ):
            maps.image(
                overlay(image, cam, alpha, colormap),
                caption=f"{column.model} · {column.method} {when}",
                width=CELL_PX,
            )
