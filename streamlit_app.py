"""HistoLens: router only. Pages live in pages/, logic in core/."""

import streamlit as st

from core.config import RESEARCH_NOTICE
from core.data.demo import demo_in_background
from core.memory import release_free_memory
from pages._shared import PUBLIC_NOTICE, demo_error_or_retry, public_mode

st.set_page_config(page_title="HistoLens", page_icon="🔬", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/datasets.py", title="Datasets", icon="🗂️"),
    st.Page("pages/training.py", title="Training", icon="📈"),
    st.Page("pages/explain.py", title="Explain", icon="🔥"),
    st.Page("pages/compare.py", title="Compare", icon="⚖️"),
    st.Page("pages/embeddings.py", title="Embeddings", icon="🗺️"),
]
pg = st.navigation(pages)
st.sidebar.caption(f"⚠️ {RESEARCH_NOTICE}")
if public_mode():
    st.info(PUBLIC_NOTICE, icon="🌐")

# A fresh clone has no data: the synthetic demo is written by a background thread (once per
# server), so the first page paints at once; Home shows its progress.
with st.sidebar:
    demo_error_or_retry(demo_in_background().error, key="demo_retry_sidebar")

try:
    pg.run()
finally:  # also after st.stop()/st.rerun(): a page's large temporary buffers (batches, CAMs)
    release_free_memory()  # go back to the OS, not into the base of the next peak (core/memory.py)
