"""Choices that keep their word, shared by every page (UI only; not listed as a page).

Every control is keyed (``<page>_<name>``) and drawn with ``persist_state="session"``, so its
value lives in ``st.session_state`` for the whole session: it survives a visit to another page
and a section that is hidden for a while, and Streamlit sends it back to the browser when the
widget reappears (without that, the browser draws the widget's default while the script goes
on using the old value). Results are computed from the value the widget returns.

Two things Streamlit cannot do alone live here: a choice whose options change (checkpoints
come and go) is kept where still offered and reset *visibly* otherwise, and uploads, which no
widget keeps, are held until the user clears them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

SESSION = "session"  # persist_state for every keyed control


def keep_offered(
    key: str,
    options: Sequence,
    default: Any,
    name: Callable[[Any], str] = str,
    context: str | None = None,
) -> None:
    """Before drawing the widget ``key``: keep its stored choice (one value or a list) where
    ``options`` still offer it; otherwise fall back to ``default`` and say what was dropped.

    ``context`` names what the options belong to (a dataset, for its patients): when it changed,
    the old choice belonged to something else, so it is replaced by ``default`` without a
    warning (the user picked another dataset; nothing of theirs was lost)."""
    state = st.session_state
    context_key = f"{key}__context"
    moved = context is not None and state.get(context_key, context) != context
    if context is not None:
        state[context_key] = context
    if key not in state or moved:
        state[key] = default
        return
    chosen = state[key]
    if isinstance(chosen, list):
        kept = [c for c in chosen if c in options]
        dropped = [c for c in chosen if c not in options]
        if dropped:
            state[key] = kept or default
    else:
        dropped = [] if chosen in options or chosen is None else [chosen]
        if dropped:
            state[key] = default
    if dropped:
        st.warning(
            f"No longer available, so no longer selected: {', '.join(map(name, dropped))}.",
            icon="↩️",
        )


def kept_uploads(key: str, files) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files in the uploader ``files``, or of the last non-empty upload
    when the uploader comes back empty (another page, another patch source): the uploader
    widget forgets its files whenever it is not drawn. A button clears them for good."""
    store = f"{key}_kept"
    if files:
        st.session_state[store] = [(f.name, f.getvalue()) for f in files]
    kept = st.session_state.get(store, [])
    if kept and not files:
        note, clear = st.columns([4, 1], vertical_alignment="center")
        note.caption(
            f"Using {len(kept)} file(s) uploaded earlier: {', '.join(n for n, _ in kept)}."
        )
        if clear.button("Clear uploads", key=f"{key}_clear"):
            st.session_state.pop(store)
            st.rerun()
    return kept
