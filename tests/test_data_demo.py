"""The embedded demo: real formats, synthetic marker, label rules, masks, size, determinism."""

from __future__ import annotations

import time

import numpy as np
import pytest

from core import config
from core.data import list_datasets, open_dataset, summarize
from core.data.demo import (
    DemoSizes,
    demo_in_background,
    ensure_demo,
    first_demo_set,
    retry_demo,
    write_demo,
)

FORMATS = ("pcam", "hcd", "idc")


@pytest.mark.parametrize("fmt", FORMATS)
def test_demo_set_opens_as_its_format_and_is_synthetic(demo_root, fmt):
    ds = open_dataset(demo_root / fmt)
    assert ds.format == fmt and ds.synthetic
    summary = summarize(ds, details=True)
    assert summary["synthetic"] and not summary["problems"]
    assert 0.25 < summary["labels"]["1"] / (summary["labels"]["0"] + summary["labels"]["1"]) < 0.6


def test_pcam_demo_sizes_suit_cpu_training(demo_root):
    splits = summarize(open_dataset(demo_root / "pcam"))["splits"]
    assert 1000 <= splits["train"]["n"] <= 2000
    assert 100 <= splits["valid"]["n"] <= 500 and 100 <= splits["test"]["n"] <= 500


@pytest.mark.parametrize("fmt", ["pcam", "hcd"])
def test_label_is_tumour_in_centre_32(demo_root, fmt):
    ds = open_dataset(demo_root / fmt)
    for i in range(0, len(ds), 7):
        mask = ds.mask(i)
        assert mask.shape == ds.read(i).shape[:2] and mask.dtype == bool
        if ds.meta.at[i, "label"] >= 0:
            assert ds.meta.at[i, "label"] == int(mask[32:64, 32:64].any())


def test_idc_demo_labels_masks_and_edge_patches(demo_root):
    ds = open_dataset(demo_root / "idc")
    assert summarize(ds, details=True)["edge_patches"] > 0
    for i in range(0, len(ds), 5):
        mask = ds.mask(i)
        assert mask.shape == ds.read(i).shape[:2]
        assert ds.meta.at[i, "label"] == int(mask.mean() >= 0.5)
    assert ds.meta["patient"].nunique() >= 5


def test_demo_looks_like_h_and_e(demo_root):
    """Pink stroma (R > B > G on average); tumour patches darker (denser nuclei)."""
    ds = open_dataset(demo_root / "pcam")
    rng = np.random.default_rng(0)
    tumour = ds.read_batch(rng.choice(ds.indices(split="train", label=1), 64, replace=False))
    normal = ds.read_batch(rng.choice(ds.indices(split="train", label=0), 64, replace=False))
    r, g, b = normal.reshape(-1, 3).mean(0)
    assert r > b > g
    assert tumour.mean() < normal.mean() - 5


def test_demo_is_small_and_deterministic(demo_root, tmp_path):
    size = sum(p.stat().st_size for p in demo_root.rglob("*") if p.is_file())
    assert size < 30 * 2**20
    small = DemoSizes(
        pcam=(("train", 16, 1),), hcd_labelled=8, hcd_test=2, hcd_slides=1, idc_patients=2
    )
    a, b = write_demo(tmp_path / "a", small), write_demo(tmp_path / "b", small)
    for fmt in FORMATS:
        da, db = open_dataset(a[fmt]), open_dataset(b[fmt])
        assert da.meta[["id", "label"]].equals(db.meta[["id", "label"]])
        np.testing.assert_array_equal(da.read_batch(range(len(da))), db.read_batch(range(len(db))))


def test_ensure_demo_writes_once_and_lists_as_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    small = DemoSizes(
        pcam=(("train", 8, 1),), hcd_labelled=4, hcd_test=0, hcd_slides=1, idc_patients=1
    )
    root = ensure_demo(small)
    assert root == config.demo_root()
    stamp = (root / "pcam" / "SYNTHETIC.md").stat().st_mtime_ns
    assert ensure_demo(small) == root
    assert (root / "pcam" / "SYNTHETIC.md").stat().st_mtime_ns == stamp
    entries = {e.name: e for e in list_datasets()}
    assert set(entries) == {"demo/pcam", "demo/hcd", "demo/idc"}
    assert all(e.synthetic for e in entries.values())
    assert {e.format for e in entries.values()} == set(FORMATS)


def test_a_killed_writers_staging_folder_is_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    """A writer killed mid-set leaves its hidden ``.demo-<pid>-*`` folder; the next write
    removes it (and pre-pid ``.demo-*`` ones), but not the folder of a live writer elsewhere."""
    import subprocess
    import sys

    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    root = config.demo_root()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leftovers = {
            "killed": root / f".demo-{dead.stdout.strip()}-k1/pcam",
            "old-style": root / ".demo-x7q2/pcam",
            "live": root / f".demo-{live.pid}-l1/pcam",
        }
        for folder in leftovers.values():
            folder.mkdir(parents=True)
            (folder / "part.h5").write_bytes(b"half-written")
        ensure_demo(
            DemoSizes(
                pcam=(("train", 8, 1),), hcd_labelled=4, hcd_test=0, hcd_slides=1, idc_patients=1
            )
        )
        assert not leftovers["killed"].parent.exists()
        assert not leftovers["old-style"].parent.exists()
        assert (leftovers["live"] / "part.h5").exists()
        assert sorted(p.name for p in root.glob(".demo-*")) == [leftovers["live"].parent.name]
    finally:
        live.kill()
        live.wait()


def test_demo_in_background_reports_progress_until_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    small = DemoSizes(
        pcam=(("train", 8, 1),), hcd_labelled=4, hcd_test=0, hcd_slides=1, idc_patients=1
    )
    first = demo_in_background(small)
    assert first.error is None and first.total == 3
    deadline = time.monotonic() + 120
    while not demo_in_background(small).ready:
        assert time.monotonic() < deadline, "the background demo was never written"
        time.sleep(0.05)
    assert {e.name for e in list_datasets()} == {"demo/pcam", "demo/hcd", "demo/idc"}


def test_demo_in_background_reports_a_write_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "file"))
    deadline = time.monotonic() + 30
    while (progress := demo_in_background()).error is None:
        assert time.monotonic() < deadline, "no error reported"
        time.sleep(0.05)
    assert not progress.ready and "Could not write the demo datasets" in progress.error


def test_a_failed_background_write_is_retried_on_request(tmp_path, monkeypatch):
    small = DemoSizes(
        pcam=(("train", 8, 1),), hcd_labelled=4, hcd_test=0, hcd_slides=1, idc_patients=1
    )
    (tmp_path / "data").write_text("not a folder")  # a disk that cannot take the demo
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    failed = first_demo_set(small)
    assert failed.error and "HISTOLENS_DATA" in failed.error and not failed.ready
    assert demo_in_background(small).error == failed.error  # no retry until asked
    (tmp_path / "data").unlink()
    retry_demo()
    first = first_demo_set(small)
    assert first.error is None and first.done >= 1
    assert "demo/pcam" in {e.name for e in list_datasets()}  # the first set, listed at once
    deadline = time.monotonic() + 120
    while not demo_in_background(small).ready:
        assert time.monotonic() < deadline, "the retried demo was never written"
        time.sleep(0.05)
    assert {e.name for e in list_datasets()} == {"demo/pcam", "demo/hcd", "demo/idc"}
    assert not [p for p in config.demo_root().iterdir() if p.name.startswith(".demo-")]
