"""Splits: IDC by patient (no patient on two sides), HCD stratified by label, manifests reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import write_fake_hcd, write_fake_idc

from core.data import open_dataset
from core.data.splits import HCD_OPTIMISM_NOTE, stratified_assign


@pytest.fixture
def many_patients(tmp_path):
    return write_fake_idc(tmp_path / "idc", n_patients=20, grid=2)


def test_idc_no_patient_on_two_sides(many_patients):
    ds = open_dataset(many_patients.root, seed=3)
    sides = ds.meta.groupby("patient")["split"].nunique()
    assert (sides == 1).all()
    per_split = ds.meta.groupby("split")["patient"].nunique()
    assert per_split.to_dict() == {"train": 14, "valid": 3, "test": 3}  # 70/15/15 of 20


def test_idc_split_is_seeded(many_patients):
    first = open_dataset(many_patients.root, seed=1).meta["split"].tolist()
    again = open_dataset(many_patients.root, seed=1).meta["split"].tolist()
    other = open_dataset(many_patients.root, seed=2).meta["split"].tolist()
    assert first == again and first != other


def test_manifest_is_saved_with_seed_and_reused(many_patients):
    ds = open_dataset(many_patients.root, seed=5)
    saved = json.loads(ds.manifest_path.read_text())
    assert saved["seed"] == 5 and saved["unit"] == "patient"
    assert saved["manifest_id"] == ds.manifest_id
    # Edit the saved manifest: reopening must follow it rather than redraw.
    moved = sorted(p for p, s in saved["assignments"].items() if s == "train")[0]
    saved["assignments"][moved] = "test"
    ds.manifest_path.write_text(json.dumps(saved))
    again = open_dataset(many_patients.root, seed=5)
    assert again.manifest_id == ds.manifest_id
    assert set(again.meta.loc[again.meta["patient"] == moved, "split"]) == {"test"}


def test_hcd_split_is_stratified_and_flagged_optimistic(tmp_path):
    fake = write_fake_hcd(tmp_path / "hcd", n=200, n_test=0)
    ds = open_dataset(fake.root, seed=0)
    shares = ds.meta.groupby("split")["label"].mean()
    assert shares.between(0.45, 0.55).all()
    assert ds.meta["split"].value_counts().to_dict() == {"train": 140, "valid": 30, "test": 30}
    assert HCD_OPTIMISM_NOTE in ds.notes


def test_custom_fractions(many_patients):
    ds = open_dataset(many_patients.root, fractions=(0.5, 0.25, 0.25))
    assert ds.meta.groupby("split")["patient"].nunique().to_dict() == {
        "train": 10,
        "valid": 5,
        "test": 5,
    }
    with pytest.raises(ValueError, match="summing to 1"):
        open_dataset(many_patients.root, fractions=(0.5, 0.5, 0.5))


def test_stratified_assign_spreads_each_stratum():
    strata = np.repeat([0, 1, 2, 3], 25)
    names = stratified_assign(strata, (0.6, 0.2, 0.2), seed=0)
    for value in range(4):
        counts = {s: int((names[strata == value] == s).sum()) for s in ("train", "valid", "test")}
        assert counts == {"train": 15, "valid": 5, "test": 5}
