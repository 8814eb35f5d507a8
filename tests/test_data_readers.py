"""The same checks on every reader, against tiny fake data written in the real formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import write_fake_idc

from core.data import READERS, DatasetError, detect_format, open_dataset, summarize
from core.data.base import META_COLUMNS


def test_detects_format(fake_set):
    assert detect_format(fake_set.root) == fake_set.format
    assert fake_set.format in READERS


def test_length_labels_and_metadata(fake_set):
    ds = open_dataset(fake_set.root)
    assert len(ds) == len(fake_set.pixels)
    assert list(ds.meta.columns[: len(META_COLUMNS)]) == list(META_COLUMNS)
    assert list(ds.meta.index) == list(range(len(ds)))
    assert dict(zip(ds.meta["id"], ds.meta["label"], strict=True)) == fake_set.labels
    assert set(ds.meta["split"]) <= {"train", "valid", "test", "unlabelled"}
    assert (ds.meta.loc[ds.meta["label"] == -1, "split"] == "unlabelled").all()
    assert ds.image_size == fake_set.image_size
    assert ds.format == fake_set.format and not ds.synthetic
    if fake_set.patients:
        assert dict(zip(ds.meta["id"], ds.meta["patient"], strict=True)) == fake_set.patients
        assert ds.meta["x"].notna().all() and ds.meta["y"].notna().all()


def test_read_returns_the_written_pixels(fake_set):
    ds = open_dataset(fake_set.root)
    for i in range(len(ds)):
        patch = ds.read(i)
        assert patch.dtype == np.uint8 and patch.ndim == 3 and patch.shape[2] == 3
        np.testing.assert_array_equal(patch, fake_set.pixels[ds.meta.at[i, "id"]])
    with pytest.raises(IndexError):
        ds.read(len(ds))


def test_read_batch_keeps_order_and_pads_white(fake_set):
    ds = open_dataset(fake_set.root)
    order = np.array([len(ds) - 1, 0, 2, 1])
    batch = ds.read_batch(order)
    assert batch.shape == (4, *ds.image_size, 3) and batch.dtype == np.uint8
    for slot, i in enumerate(order):
        patch = fake_set.pixels[ds.meta.at[i, "id"]]
        h, w = patch.shape[:2]
        np.testing.assert_array_equal(batch[slot, :h, :w], patch)
        assert (batch[slot, h:, :] == 255).all() and (batch[slot, :, w:] == 255).all()


def test_indices_filter_by_split_label_patient(fake_set):
    ds = open_dataset(fake_set.root)
    for split in ds.meta["split"].unique():
        for label in (0, 1):
            got = ds.indices(split=split, label=label)
            expected = np.flatnonzero((ds.meta["split"] == split) & (ds.meta["label"] == label))
            np.testing.assert_array_equal(got, expected)
    if fake_set.patients:
        patient = sorted(set(fake_set.patients.values()))[0]
        assert set(ds.meta.loc[ds.indices(patient=patient), "patient"]) == {patient}
    assert len(ds.indices()) == len(ds)


def test_pickles_after_reading(fake_set):
    """DataLoader workers get a pickled copy: it must not carry an open h5 handle."""
    ds = open_dataset(fake_set.root)
    first = ds.read(0)
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.read(0), first)


def test_no_masks_on_real_style_data(fake_set):
    assert open_dataset(fake_set.root).mask(0) is None


def test_summary_counts_match_labels(fake_set):
    ds = open_dataset(fake_set.root)
    summary = summarize(ds)
    labels = np.array(list(fake_set.labels.values()))
    assert summary["n"] == len(fake_set.pixels)
    assert summary["labels"] == {"0": int((labels == 0).sum()), "1": int((labels == 1).sum())}
    assert sum(s["n"] for s in summary["splits"].values()) == summary["n"]
    expected_patients = len(set(fake_set.patients.values())) if fake_set.patients else None
    assert summary["patients"] == expected_patients


def test_empty_folder_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset"):
        detect_format(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        open_dataset(tmp_path / "missing")


def test_a_download_wrapper_folder_names_the_dataset_inside(fake_set):
    """Kaggle's IDC zip unpacks to IDC_regular_ps50_idx5/<patient>/...: pointed at the folder
    above, the error names the dataset one level down instead of only saying what is missing."""
    wrapper = fake_set.root.parent
    (wrapper / "notes").mkdir()  # a sibling that is not a dataset is not named
    with pytest.raises(DatasetError, match="not a dataset") as err:
        detect_format(wrapper)
    assert f"one level down: {fake_set.root} ({fake_set.format.upper()}); give that folder" in str(
        err.value
    )
    assert "notes" not in str(err.value)


def test_one_idc_patient_folder_names_the_folder_above(fake_idc):
    with pytest.raises(DatasetError, match="one IDC patient's folder") as err:
        detect_format(fake_idc.root / "10001")
    assert str(err.value).endswith(f"give the folder above it, {fake_idc.root}.")


def test_a_folder_of_many_subfolders_gets_no_hint_and_no_deep_scan(tmp_path):
    for k in range(60):
        (tmp_path / f"d{k:02d}").mkdir()
    write_fake_idc(tmp_path / "d99")  # a dataset among 61 folders: not looked for
    with pytest.raises(DatasetError) as err:
        detect_format(tmp_path)
    assert str(err.value).endswith("folders).")


def _read_in_child(ds, i):
    return ds.read(i)


def test_forked_worker_reads_after_parent(fake_set):
    """DataLoader-style fork after the parent has read (h5 handle must be reopened)."""
    import multiprocessing

    ds = open_dataset(fake_set.root)
    expected = ds.read(1)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        np.testing.assert_array_equal(pool.apply(_read_in_child, (ds, 1)), expected)


def test_pcam_keeps_no_h5_handle_until_first_read(fake_pcam):
    import h5py

    before = len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))
    ds = open_dataset(fake_pcam.root)
    assert (
        len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)) == before
    )  # __init__ validated, then closed
    ds.read(0)
    assert (
        len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)) == before + 1
    )  # one lazy handle (train split)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {}


def test_idc_index_is_cached_and_rebuilt_when_the_tree_changes(fake_idc, monkeypatch):
    from core.data import idc

    open_dataset(fake_idc.root)
    monkeypatch.setattr(idc, "_scan", lambda dirs: pytest.fail("index rebuilt needlessly"))
    assert len(open_dataset(fake_idc.root)) == len(fake_idc.pixels)
    monkeypatch.undo()
    src = next(iter(fake_idc.files.values()))
    extra = src.with_name(src.name.replace("_y1_", "_y9001_"))
    extra.write_bytes(src.read_bytes())
    assert len(open_dataset(fake_idc.root)) == len(fake_idc.pixels) + 1


def test_idc_damaged_index_cache_is_rebuilt(fake_idc):
    from core import config

    open_dataset(fake_idc.root)
    for cached in (config.cache_dir() / "idc_index").glob("*.parquet"):
        cached.write_bytes(b"not parquet")
    assert len(open_dataset(fake_idc.root)) == len(fake_idc.pixels)
