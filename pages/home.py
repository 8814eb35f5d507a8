"""Home: what HistoLens is, the research-use notice, and the datasets found under the data root."""

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

# `streamlit run pages/<page>.py` puts only pages/ on sys.path; make `core` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import config
from core.data import list_datasets
from core.data.demo import demo_in_background

st.title("🔬 HistoLens")
st.markdown(
    "Look inside binary tumour-vs-normal classifiers of histopathology patches "
    "(PatchCamelyon, Kaggle Histopathologic Cancer Detection, IDC breast)."
)
st.warning(config.RESEARCH_NOTICE, icon="⚠️")
st.subheader("What to try first")
st.markdown(
    "1. **Datasets** (sidebar): pick `demo/idc`, filter the gallery to *tumour (1)*, then open "
    "the **Slide mosaic** tab: one patient's slide rebuilt from its patches, labels overlaid.\n"
    "2. **Explain**: the shipped demo checkpoint on `demo/pcam` — set *Outcome* to **FN** (tumour "
    "the model missed) and compare GradCAM with EigenCAM; **Compute faithfulness** scores them.\n"
    "3. **Compare**: the two demo checkpoints side by side — click *Choose thresholds for "
    "sensitivity ≥ 0.90* and read what it costs in specificity; browse the disagreements.\n"
    "4. **Training**: start a 2-epoch run on `demo/idc` (about a minute on a CPU) and watch its "
    "curves; when it ends it is offered on Explain and Compare.\n\n"
    "Then put real data under the data root (below) and do the same with it. The demo "
    "checkpoints learnt painted tissue: on real patches their scores mean nothing."
)


@st.fragment(run_every="1s")
def demo_progress() -> None:
    """Progress of the background demo writer; reruns the page once the demo is listed."""
    progress = demo_in_background()
    if progress.error:
        st.warning(progress.error)
    elif progress.ready:
        st.rerun()
    else:
        st.progress(
            progress.done / progress.total,
            text=f"First launch: writing the synthetic demo datasets in the background "
            f"({progress.done}/{progress.total} sets, about 10 s)…",
        )


if not demo_in_background().ready:
    demo_progress()
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
