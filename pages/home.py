import streamlit as st

from core.config import RESEARCH_NOTICE

st.title("🔬 HistoLens")
st.markdown(
    "Look inside binary tumour-vs-normal classifiers of histopathology patches "
    "(PatchCamelyon, Kaggle Histopathologic Cancer Detection, IDC breast)."
)
st.warning(RESEARCH_NOTICE, icon="⚠️")
st.markdown(
    "- **Datasets**: browse a dataset, its class balance, colour statistics and slide mosaics.\n"
    "- **Training**: train models as background jobs and watch live curves.\n"
    "- **Explain**: Grad-CAM-family heatmaps on dataset patches or your uploads.\n"
    "- **Compare**: confusion matrices, ROC/PR, calibration and disagreements between models."
)
