"""The sidebar picker of the pages that run checkpoints on a dataset split (Compare, Embeddings).

UI only. Each choice is keyed ``<page>_checkpoints`` / ``<page>_dataset`` / ``<page>_split``,
kept for the session (pages._shared.state) and mirrored in the URL (``?ckpt=…&ckpt=…&data=…
&split=…``), so a reload or a shared link shows the same checkpoints on the same data.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.catalogue import card_problem, checkpoint_label, model_names, readable, trained_on_index
from core.evaluate import SPLITS
from pages._shared import say_not_calibrated
from pages._shared.state import SESSION, keep_offered


def choose_inputs(
    page: str, entries, checkpoints, counts: tuple[int, int], verb: str
) -> tuple[list[Path], object, str]:
    """Sidebar: ``counts`` = (fewest, most) checkpoints, the dataset (first default: the one the
    first checkpoint was trained on), the split. Returns (chosen checkpoints whose card reads,
    dataset entry, split); each unreadable choice gets one line ("… cannot be <verb>: why")."""
    fewest, most = counts
    names = dict(zip(checkpoints, model_names(checkpoints), strict=True))
    seed_from_url(page, names, entries, counts)
    keep_offered(f"{page}_checkpoints", checkpoints, readable(checkpoints)[:2], name=names.get)
    with st.sidebar:
        chosen = st.multiselect(
            f"Checkpoints ({fewest}–{most})",
            checkpoints,
            format_func=checkpoint_label,
            max_selections=most,
            key=f"{page}_checkpoints",
            persist_state=SESSION,
        )
        trained_on = entries[trained_on_index(entries, chosen[0])] if chosen else entries[0]
        keep_offered(f"{page}_dataset", entries, trained_on, name=lambda e: e.name)
        entry = st.selectbox(
            "Dataset",
            entries,
            format_func=lambda e: e.label(tag_synthetic=False),  # the sidebar is narrow
            key=f"{page}_dataset",
            persist_state=SESSION,
        )
        split = st.selectbox("Split", SPLITS, key=f"{page}_split", persist_state=SESSION)
    st.query_params.from_dict(
        {"ckpt": [names[p] for p in chosen], "data": entry.name, "split": split}
    )
    for path in [p for p in chosen if card_problem(p)]:
        st.error(f"{names[path]} cannot be {verb}: {card_problem(path)}")
    usable = [p for p in chosen if not card_problem(p)]
    say_not_calibrated({p: names[p] for p in usable})
    return usable, entry, split


def seed_from_url(page: str, names, entries, counts: tuple[int, int]) -> None:
    """A session's first visit to ``page`` takes its choices from the URL; names it does not
    know are ignored (the defaults apply)."""
    state, params = st.session_state, st.query_params
    if f"{page}_checkpoints" in state:
        return
    fewest, most = counts
    by_name = {name: path for path, name in names.items()}
    wanted = [by_name[n] for n in params.get_all("ckpt") if n in by_name][:most]
    if len(wanted) >= fewest:
        state[f"{page}_checkpoints"] = wanted
    match = [e for e in entries if e.name == params.get("data")]
    if match:
        state[f"{page}_dataset"] = match[0]
    if params.get("split") in SPLITS:
        state[f"{page}_split"] = params["split"]
