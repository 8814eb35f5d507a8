"""HistoLens core: all logic lives here. Never imports streamlit.

Research use only. Not for diagnosis.
"""

__version__ = "0.1.0"
