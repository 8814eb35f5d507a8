"""Stain normalisation and the Macenko shift over whole datasets finish with zero crashes: the
demo sets and, where present, the real IDC sample, whose many mostly-white edge patches are what
crashes torchstain; the patches passed through unchanged are counted."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core import stain
from core.data import open_dataset

pytest.importorskip("torchstain")

REPO = Path(__file__).resolve().parent.parent
REAL_IDC = Path(
    os.environ.get("HISTOLENS_REAL_IDC", REPO.parent / "shared" / "data" / "real" / "idc")
)
CHUNK = 512


def every_patch(ds, treat) -> np.ndarray:
    """``treat(images, ids) -> StainResult`` over all of ``ds``; the untreated flags."""
    ids = ds.meta["id"].astype(str).to_numpy()
    flags = []
    for start in range(0, len(ds), CHUNK):
        chunk = np.arange(start, min(start + CHUNK, len(ds)))
        result = treat(ds.read_batch(chunk), ids[chunk])
        assert result.images.dtype == np.uint8 and len(result.images) == len(chunk)
        flags.append(result.untreated)
    return np.concatenate(flags)


def check_whole(ds) -> dict[str, int]:
    train = ds.indices(split="train")
    targets = {m: stain.fit_on_patches(m, ds, train) for m in stain.STAIN_METHODS}
    counts = {
        f"normalise {m}": every_patch(ds, lambda x, _ids, t=t: stain.normalise(x, t)).sum()
        for m, t in targets.items()
    }
    seeds = stain.patch_seeds
    counts["macenko shift"] = every_patch(
        ds, lambda x, ids: stain.macenko_augment(x, 0.3, seeds(ids))
    ).sum()
    # the rule that passes patches through is the tissue rule, the same for every method
    background = (stain.stained_fraction(ds.read_batch(np.arange(len(ds)))) < 0.01).sum()
    assert all(count >= background for count in counts.values()), (counts, background)
    return counts


@pytest.mark.parametrize("name", ["pcam", "hcd", "idc"])
def test_every_demo_patch(demo_root, name):
    check_whole(open_dataset(demo_root / name))


@pytest.mark.skipif(not REAL_IDC.is_dir(), reason=f"real IDC sample absent: {REAL_IDC}")
def test_every_real_idc_patch():
    ds = open_dataset(REAL_IDC)
    counts = check_whole(ds)
    assert max(counts.values()) < 0.1 * len(ds), counts  # background only, not a broken method
