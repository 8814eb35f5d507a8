"""Patch datasets: PCam (h5), Kaggle HCD (tif + csv) and IDC (png tree) behind one base class.

    ds = open_dataset(path, seed=0, fractions=(0.7, 0.15, 0.15))  # detects the format

See docs/ARCHITECTURE.md (core.data) for the contract.
"""

from __future__ import annotations

from core.data.base import DatasetEntry, DatasetError, PatchDataset
from core.data.registry import READERS, dataset_name, detect_format, list_datasets, open_dataset
from core.data.summary import summarize

__all__ = [
    "READERS",
    "dataset_name",
    "DatasetEntry",
    "DatasetError",
    "PatchDataset",
    "detect_format",
    "list_datasets",
    "open_dataset",
    "summarize",
]
