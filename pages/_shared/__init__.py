"""UI helpers every page shares (Streamlit only; logic stays in core/).

A package, not a ``pages/_shared.py`` file: Streamlit's legacy ``pages/``-folder mode lists every
``pages/*.py`` as a page (only dot-files and ``__init__.py`` are skipped), and the standalone
page test runs each of them. Import it as ``pages._shared`` after the page's sys.path line.
"""

from __future__ import annotations

import streamlit as st

from core.data.demo import ensure_demo


def ensure_demo_or_warn() -> None:
    """First launch: write the synthetic demo (or wait for the writer already at it). A disk
    that cannot take it (read-only, full) gets one warning; the page goes on without the demo."""
    try:
        with st.spinner("Writing the synthetic demo datasets (first launch only)…"):
            ensure_demo()
    except OSError as err:
        st.warning(f"Could not write the demo datasets: {err}")
