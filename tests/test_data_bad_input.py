"""Bad input gets a one-line DatasetError naming the file (or a reported problem), never a crash."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import rewrite_h5, write_fake_hcd, write_fake_idc, write_fake_pcam
from PIL import Image

from core.data import DatasetError, open_dataset, summarize

PCAM = "camelyonpatch_level_2_split_{}_{}.h5"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# -- each case: writer, corruption, expected message fragment; the error must name the file ----
def pcam_missing_y(fake):
    (fake.root / PCAM.format("valid", "y")).unlink()
    return PCAM.format("valid", "y"), "missing"


def pcam_length_mismatch(fake):
    rewrite_h5(fake.root / PCAM.format("test", "y"), "y", data=np.zeros((3, 1, 1, 1), np.uint8))
    return PCAM.format("test", "y"), "3 labels but"


def pcam_wrong_dtype(fake):
    rewrite_h5(
        fake.root / PCAM.format("train", "x"), "x", data=np.zeros((8, 96, 96, 3), np.float32)
    )
    return PCAM.format("train", "x"), "expected uint8"


def pcam_wrong_shape(fake):
    rewrite_h5(fake.root / PCAM.format("train", "x"), "x", data=np.zeros((8, 96, 96), np.uint8))
    return PCAM.format("train", "x"), "expected N×H×W×3"


def pcam_truncated(fake):
    _truncate(fake.root / PCAM.format("train", "x"))
    return PCAM.format("train", "x"), "truncated or corrupt"


def pcam_gzipped(fake):
    path = fake.root / PCAM.format("train", "x")
    path.rename(path.with_name(path.name + ".gz"))
    return path.name + ".gz", "gunzip"


def pcam_bad_labels(fake):
    rewrite_h5(fake.root / PCAM.format("train", "y"), "y", data=np.full((8, 1, 1, 1), 7, np.uint8))
    return PCAM.format("train", "y"), "0 or 1"


def hcd_csv_without_columns(fake):
    (fake.root / "train_labels.csv").write_text("name,target\nabc,1\n")
    return "train_labels.csv", "expected 'id' and 'label'"


def hcd_duplicate_ids(fake):
    path = fake.root / "train_labels.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    return "train_labels.csv", "duplicate ids"


def hcd_empty_folder(fake):
    for tif in (fake.root / "train").glob("*.tif"):
        tif.unlink()
    return "train", "no .tif files"


def idc_duplicate_ids(fake):
    src = next(iter(fake.files.values()))
    other = fake.root / "10001" / "0"
    other.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, other / src.name)
    return src.name, "duplicate ids"


def idc_empty_folders(fake):
    shutil.rmtree(fake.root)
    (fake.root / "10000" / "0").mkdir(parents=True)
    return str(fake.root), "no .png patches"


OPEN_ERRORS = {
    "pcam-missing-y": (write_fake_pcam, pcam_missing_y),
    "pcam-x-y-length": (write_fake_pcam, pcam_length_mismatch),
    "pcam-dtype": (write_fake_pcam, pcam_wrong_dtype),
    "pcam-shape": (write_fake_pcam, pcam_wrong_shape),
    "pcam-truncated": (write_fake_pcam, pcam_truncated),
    "pcam-gz": (write_fake_pcam, pcam_gzipped),
    "pcam-labels": (write_fake_pcam, pcam_bad_labels),
    "hcd-columns": (write_fake_hcd, hcd_csv_without_columns),
    "hcd-duplicates": (write_fake_hcd, hcd_duplicate_ids),
    "hcd-empty": (write_fake_hcd, hcd_empty_folder),
    "idc-duplicates": (write_fake_idc, idc_duplicate_ids),
    "idc-empty": (write_fake_idc, idc_empty_folders),
}


@pytest.mark.parametrize("case", sorted(OPEN_ERRORS))
def test_bad_dataset_fails_to_open_with_a_named_file(case, tmp_path):
    writer, corrupt = OPEN_ERRORS[case]
    fake = writer(tmp_path / "set")
    file_name, fragment = corrupt(fake)
    with pytest.raises(DatasetError) as err:
        open_dataset(fake.root)
    message = str(err.value)
    assert fragment in message and file_name in message
    assert "\n" not in message


# -- damaged single patches: the set opens, reading that patch names the file ---------------
def _first_file(fake):
    patch_id = sorted(fake.files)[0]
    return patch_id, fake.files[patch_id]


def truncate_file(fake):
    patch_id, path = _first_file(fake)
    _truncate(path, 0.6)
    return patch_id, path, "truncated or corrupt"


def garbage_file(fake):
    patch_id, path = _first_file(fake)
    path.write_bytes(path.read_bytes()[:40] + b"\0" * 200)  # header kept, data destroyed
    return patch_id, path, "truncated or corrupt"


def sixteen_bit_file(fake):
    patch_id, path = _first_file(fake)
    Image.fromarray(np.zeros((50, 50), np.uint16)).save(path)
    return patch_id, path, "expected 8-bit RGB"


@pytest.mark.parametrize("writer", [write_fake_hcd, write_fake_idc], ids=["hcd", "idc"])
@pytest.mark.parametrize("corrupt", [truncate_file, garbage_file, sixteen_bit_file])
def test_damaged_patch_names_its_file_on_read(writer, corrupt, tmp_path):
    fake = writer(tmp_path / "set")
    patch_id, path, fragment = corrupt(fake)
    ds = open_dataset(fake.root)
    i = int(np.flatnonzero(ds.meta["id"] == patch_id)[0])
    with pytest.raises(DatasetError) as err:
        ds.read_batch([i])
    assert fragment in str(err.value) and str(path) in str(err.value)
    others = [j for j in range(len(ds)) if j != i]
    assert ds.read_batch(others).shape == (len(others), *fake.image_size, 3)  # rest still reads


def test_idc_non_png_file_is_reported_not_indexed(fake_idc):
    bad = next(iter(fake_idc.files.values()))
    bad.write_bytes(b"not a png at all, just text" * 4)
    ds = open_dataset(fake_idc.root)
    assert len(ds) == len(fake_idc.files) - 1
    assert any("not PNGs" in p and str(bad) in p for p in ds.problems)


# -- reported, not silently dropped --------------------------------------------------------
def test_hcd_ids_without_files_and_files_without_labels_are_reported(fake_hcd):
    first, second = sorted(i for i, y in fake_hcd.labels.items() if y >= 0)[:2]
    fake_hcd.files[first].unlink()
    csv = fake_hcd.root / "train_labels.csv"
    csv.write_text("\n".join(line for line in csv.read_text().splitlines() if second not in line))
    ds = open_dataset(fake_hcd.root)
    assert first not in set(ds.meta["id"])
    assert ds.meta.loc[ds.meta["id"] == second, "split"].item() == "unlabelled"
    text = " ".join(ds.problems)
    assert "1 ids in the csv with no .tif" in text and first in text
    assert "1 tif files with no label" in text and second in text
    assert summarize(ds, details=True)["problems"] == ds.problems


def test_hcd_submission_ids_without_test_files_are_reported(fake_hcd):
    missing_id = next(i for i, y in fake_hcd.labels.items() if y == -1)
    fake_hcd.files[missing_id].unlink()
    ds = open_dataset(fake_hcd.root)
    assert any("submission ids with no test/" in p and missing_id in p for p in ds.problems)


def test_idc_folder_and_name_label_mismatch_is_reported(fake_idc):
    patch_id = next(i for i, y in fake_idc.labels.items() if y == 1)
    src = fake_idc.files[patch_id]
    dst = src.parent.parent / "0" / src.name
    dst.parent.mkdir(exist_ok=True)
    src.rename(dst)
    ds = open_dataset(fake_idc.root)
    assert ds.meta.loc[ds.meta["id"] == patch_id, "label"].item() == 0  # folder label wins
    assert any("disagrees with their folder" in p and patch_id in p for p in ds.problems)


def test_pcam_meta_csv_with_wrong_length_is_an_error(fake_pcam):
    (fake_pcam.root / "camelyonpatch_level_2_split_train_meta.csv").write_text(
        "coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n1,2,False,False,slide_a\n"
    )
    with pytest.raises(DatasetError, match="1 rows but the split has 8"):
        open_dataset(fake_pcam.root)


def test_pcam_meta_csv_gives_slides_and_coordinates(fake_pcam):
    rows = "\n".join(f"{i * 10},{i * 20},False,False,slide_{i % 2}" for i in range(8))
    (fake_pcam.root / "camelyonpatch_level_2_split_train_meta.csv").write_text(
        "coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n" + rows + "\n"
    )
    ds = open_dataset(fake_pcam.root)
    train = ds.meta[ds.meta["split"] == "train"]
    assert list(train["patient"]) == [f"slide_{i % 2}" for i in range(8)]
    assert list(train["x"]) == [i * 20 for i in range(8)]
    assert ds.meta.loc[ds.meta["split"] == "valid", "patient"].isna().all()
    assert summarize(ds)["patients"] == 2


def test_pcam_subset_of_splits_is_fine(tmp_path):
    fake = write_fake_pcam(tmp_path / "p", sizes=(("test", 5),))
    ds = open_dataset(fake.root)
    assert set(ds.meta["split"]) == {"test"} and len(ds) == 5
