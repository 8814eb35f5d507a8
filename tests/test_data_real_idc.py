"""The real IDC sample (../shared/data/real/idc or HISTOLENS_REAL_IDC) opens and summarises."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.data import open_dataset, summarize

REPO = Path(__file__).resolve().parent.parent
REAL_IDC = Path(
    os.environ.get("HISTOLENS_REAL_IDC", REPO.parent / "shared" / "data" / "real" / "idc")
)

pytestmark = pytest.mark.skipif(not REAL_IDC.is_dir(), reason=f"real IDC sample absent: {REAL_IDC}")


def test_real_idc_counts_and_patient_split():
    ds = open_dataset(REAL_IDC)
    summary = summarize(ds, details=True)
    assert summary["format"] == "idc" and not summary["synthetic"]
    assert summary["n"] == 7583 and summary["patients"] == 190
    assert summary["labels"] == {"0": 5519, "1": 2064}
    assert summary["image_size"] == [50, 50]
    assert (ds.meta.groupby("patient")["split"].nunique() == 1).all()
    batch = ds.read_batch(np.arange(0, len(ds), 500))
    assert batch.dtype == np.uint8 and batch.shape[1:] == (50, 50, 3)
