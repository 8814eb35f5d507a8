"""Home: what HistoLens is, the research-use notice, and the datasets found under the data root."""

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

# `streamlit run pages/<page>.py` puts only pages/ on sys.path; make `core` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import config
from core.data import list_datasets
from core.data.demo import ensure_demo

st.title("🔬 HistoLens")
st.markdown(
    "Look inside binary tumour-vs-normal classifiers of histopathology patches "
    "(PatchCamelyon, Kaggle Histopathologic Cancer Detection, IDC breast)."
)
st.warning(config.RESEARCH_NOTICE, icon="⚠️")
st.markdown(
    "- **Datasets**: browse a dataset, its class balance, colour statistics and slide mosaics.\n"
    "- **Training**: train models as background jobs and watch live curves.\n"
    "- **Explain**: Grad-CAM-family heatmaps on dataset patches or your uploads.\n"
    "- **Compare**: confusion matrices, ROC/PR, calibration and disagreements between models."
)

try:
    with st.spinner("Writing the synthetic demo datasets (first launch only)…"):
        ensure_demo()
except OSError as err:
    st.warning(f"Could not write the demo datasets: {err}")

entries = list_datasets()
st.subheader("Datasets")
if entries:
    st.dataframe(
        pd.DataFrame(
            {
                "dataset": [e.name for e in entries],
                "format": [e.format for e in entries],
                "data": ["synthetic demo" if e.synthetic else "real" for e in entries],
            }
        ),
        hide_index=True,
        width="content",
    )
else:
    st.info("No datasets found.")
st.caption(
    f"Datasets are read from `{config.data_root()}` (set `HISTOLENS_DATA` to change it). "
    "Put PCam h5 files, a Kaggle HCD download or an IDC folder tree there. The `demo/` sets are "
    "synthetic: painted tissue for trying the app, never for judging a model."
)
