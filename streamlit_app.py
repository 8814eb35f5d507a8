"""HistoLens: router only. Pages live in pages/, logic in core/."""

import streamlit as st

from core.config import RESEARCH_NOTICE
from core.data.demo import ensure_demo

st.set_page_config(page_title="HistoLens", page_icon="🔬", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/datasets.py", title="Datasets", icon="🗂️"),
    st.Page("pages/training.py", title="Training", icon="📈"),
    st.Page("pages/explain.py", title="Explain", icon="🔥"),
    st.Page("pages/compare.py", title="Compare", icon="⚖️"),
]
pg = st.navigation(pages)
st.sidebar.caption(f"⚠️ {RESEARCH_NOTICE}")

# A fresh clone has no data: write the synthetic demo once (a few seconds), then never again.
# After st.navigation, so the real page list shows while it is written.
try:
    with st.spinner("First launch: writing the synthetic demo datasets…"):
        ensure_demo()
except OSError as err:
    st.sidebar.warning(f"Could not write the demo datasets: {err}")

pg.run()
