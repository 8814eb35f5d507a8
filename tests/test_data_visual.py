"""Colour statistics and slide mosaics (core functions the Datasets and Compare pages render)."""

from __future__ import annotations

import numpy as np
import pytest

from core.data import open_dataset
from core.data.visual import (
    colour_stats,
    mosaic_groups,
    overlay_labels,
    overlay_probs,
    slide_mosaic,
    why_empty,
)


def test_colour_stats_from_a_seeded_sample(fake_idc):
    ds = open_dataset(fake_idc.root)
    first = colour_stats(ds, n=10, seed=1)
    assert first.n == 10 and first.histogram.shape == (3, 256)
    np.testing.assert_allclose(first.histogram.sum(1), 1.0)
    again = colour_stats(ds, n=10, seed=1)
    np.testing.assert_array_equal(first.mean, again.mean)
    # Uniform random pixels: mean ~127.5, std ~73.9, no background patches.
    assert np.all(np.abs(first.mean - 127.5) < 6) and np.all(np.abs(first.std - 73.9) < 4)
    assert first.white_fraction == 0.0


def test_white_patches_are_counted(fake_hcd):
    from PIL import Image

    ids = sorted(i for i in fake_hcd.files if fake_hcd.labels[i] >= 0)[:3]
    for patch_id in ids:
        Image.fromarray(np.full((96, 96, 3), 245, np.uint8)).save(fake_hcd.files[patch_id])
    ds = open_dataset(fake_hcd.root)
    stats = colour_stats(ds, n=len(ds))
    assert stats.white_fraction == pytest.approx(3 / len(ds))


def test_mosaic_places_patches_at_their_coordinates(fake_idc):
    ds = open_dataset(fake_idc.root)
    patient = mosaic_groups(ds)[0]
    seen = []
    mosaic = slide_mosaic(ds, patient, progress=seen.append)
    assert mosaic.image.shape == (150, 120, 3) and mosaic.scale == 1.0  # 3×50 rows, 50+50+20
    assert mosaic.n_patches == 9 and seen[-1] == 1.0
    for i in ds.indices(patient=patient):
        x, y = int(ds.meta.at[i, "x"]) - 1, int(ds.meta.at[i, "y"]) - 1
        patch = ds.read(i)
        np.testing.assert_array_equal(mosaic.image[y : y + 50, x : x + patch.shape[1]], patch)
        assert (mosaic.labels[y : y + 50, x : x + patch.shape[1]] == ds.meta.at[i, "label"]).all()


def test_mosaic_probability_overlay_hook(fake_idc):
    ds = open_dataset(fake_idc.root)
    patient = mosaic_groups(ds)[0]
    rows = ds.indices(patient=patient)
    probs = {ds.meta.at[i, "id"]: 1.0 for i in rows[:1]}
    mosaic = slide_mosaic(ds, patient, probs=probs, max_side=75)
    assert mosaic.scale == 0.5 and mosaic.image.shape[0] == 75
    assert np.isfinite(mosaic.probs).sum() > 0 and np.isnan(mosaic.probs).sum() > 0
    tinted = overlay_probs(mosaic)
    changed = np.any(tinted != mosaic.image, axis=2)
    assert (changed <= np.isfinite(mosaic.probs)).all() and changed.any()
    assert overlay_labels(mosaic).shape == mosaic.image.shape
    with pytest.raises(ValueError, match="without probabilities"):
        overlay_probs(slide_mosaic(ds, patient))


def test_an_empty_gallery_says_which_filter_empties_it(fake_idc):
    """Issue 13, item 9: "Showing 0 of 0" with no reason when a patient is not in the split."""
    ds = open_dataset(fake_idc.root)
    patient = str(ds.meta["patient"].iloc[0])
    home = ds.meta.loc[ds.indices(patient=patient), "split"].iloc[0]
    other = next(s for s in ("train", "valid", "test") if s != home)
    assert why_empty(ds, split=home, patient=patient) is None
    reason = why_empty(ds, split=other, patient=patient)
    assert patient in reason and repr(other) in reason and repr(home) in reason
    assert why_empty(ds, label=7) == "No patch matches label 7."
