"""Malformed datasets, by class of failure, generated on the fly in the real formats.

Every case either fails to open with ONE line naming the file (and `python -m core data summary`
prints that line and exits 2), or opens with the damage listed in ``ds.problems`` and every
other patch readable. Nothing may raise anything but DatasetError, allocate from a forged size,
or block on a FIFO (the `timeout` marks turn a hang into a failure).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    forged_png,
    forged_tiff,
    rewrite_h5,
    write_fake_hcd,
    write_fake_idc,
    write_fake_pcam,
)
from PIL import Image

from core.__main__ import main
from core.data import READERS, DatasetError, open_dataset, summarize

PCAM = "camelyonpatch_level_2_split_{}_{}.h5"
META_CSV = "camelyonpatch_level_2_split_train_meta.csv"
HUGE = 60000  # claimed side: 3.6 gigapixels, a decompression bomb
LARGE = 2000  # claimed side: under Pillow's bomb limit, over the 1024 px patch limit
NOT_UTF8 = b"\xff\xfe"
pytestmark = pytest.mark.timeout(120)


def _fifo(path: Path) -> None:
    if path.exists():
        path.unlink()
    os.mkfifo(path)


def _unlistable(monkeypatch, folder: Path) -> None:
    """`folder` behaves as one the server's user may not list (tests may run as root)."""
    real = os.scandir
    target = os.fspath(folder)

    def scandir(path="."):
        if os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


# -- class 1: files whose content contradicts the format (PCam h5 + meta csv) ----------------
def y_file(fake):
    return fake.root / PCAM.format("train", "y")


def x_file(fake):
    return fake.root / PCAM.format("train", "x")


PCAM_CONTENT = {
    "y-scalar": (y_file, lambda p: rewrite_h5(p, "y", data=np.uint8(1))),
    "y-strings": (y_file, lambda p: rewrite_h5(p, "y", data=np.array([b"tumour"] * 8))),
    "y-group": (y_file, lambda p: rewrite_h5(p, "y", group=True)),
    "y-fractional": (y_file, lambda p: rewrite_h5(p, "y", data=np.full(8, 0.3))),
    "y-nan": (y_file, lambda p: rewrite_h5(p, "y", data=np.full(8, np.nan))),
    "y-two-per-patch": (y_file, lambda p: rewrite_h5(p, "y", data=np.zeros((8, 2), np.uint8))),
    "y-claims-2e9-rows": (
        y_file,
        lambda p: rewrite_h5(p, "y", shape=(2 * 10**9, 1, 1, 1), dtype="u1", chunks=True),
    ),
    "x-group": (x_file, lambda p: rewrite_h5(p, "x", group=True)),
    "x-claims-2e9-rows": (
        x_file,
        lambda p: rewrite_h5(p, "x", shape=(2 * 10**9, 96, 96, 3), dtype="u1", chunks=True),
    ),
    "x-claims-1e6-unwritten-rows": (
        x_file,
        lambda p: rewrite_h5(p, "x", shape=(10**6, 96, 96, 3), dtype="u1", chunks=True),
    ),
    "x-claims-60000px": (
        x_file,
        lambda p: rewrite_h5(p, "x", shape=(8, HUGE, HUGE, 3), dtype="u1", chunks=True),
    ),
    "x-zero-px": (x_file, lambda p: rewrite_h5(p, "x", data=np.zeros((8, 0, 96, 3), np.uint8))),
    "x-fifo": (x_file, _fifo),
    "y-is-a-folder": (y_file, lambda p: (p.unlink(), p.mkdir())),
    "meta-not-utf8": (
        lambda fake: fake.root / META_CSV,
        lambda p: p.write_bytes(b"coord_y,coord_x,wsi\n" + b"1,2,\xff\xfe\x00slide\n" * 8),
    ),
    "meta-coords-text": (
        lambda fake: fake.root / META_CSV,
        lambda p: p.write_text("coord_y,coord_x,wsi\n" + "1,left,s\n" * 8),
    ),
    "meta-coords-fractional": (
        lambda fake: fake.root / META_CSV,
        lambda p: p.write_text("coord_y,coord_x,wsi\n" + "1,2.5,s\n" * 8),
    ),
    "meta-empty-wsi": (
        lambda fake: fake.root / META_CSV,
        lambda p: p.write_text("coord_y,coord_x,wsi\n" + "1,2,s\n" * 7 + "1,2,\n"),
    ),
    "meta-fifo": (lambda fake: fake.root / META_CSV, _fifo),
    "meta-binary": (lambda fake: fake.root / META_CSV, lambda p: p.write_bytes(bytes(range(256)))),
}


# -- class 2: label csvs (HCD) that are not what they claim ----------------------------------
def labels_csv(fake):
    return fake.root / "train_labels.csv"


def _relabel(path: Path, value: str) -> None:
    lines = path.read_text().splitlines()
    first_id = lines[1].split(",")[0]
    path.write_text("\n".join([lines[0], f"{first_id},{value}", *lines[2:]]) + "\n")


HCD_CONTENT = {
    "labels-not-utf8": (labels_csv, lambda p: p.write_bytes(b"id,label\n\xff\xfe,1\n")),
    "labels-fractional": (labels_csv, lambda p: _relabel(p, "0.5")),
    "labels-text": (labels_csv, lambda p: _relabel(p, "tumour")),
    "labels-negative": (labels_csv, lambda p: _relabel(p, "-1")),
    "labels-empty-id": (labels_csv, lambda p: p.write_text(p.read_text() + ",1\n")),
    "labels-empty-file": (labels_csv, lambda p: p.write_bytes(b"")),
    "labels-binary": (labels_csv, lambda p: p.write_bytes(bytes(range(256)) * 4)),
    "labels-fifo": (labels_csv, _fifo),
    "labels-is-a-folder": (labels_csv, lambda p: (p.unlink(), p.mkdir())),
}


# -- class 3: image headers that claim more than a patch (every forged file in the set) ------
def _forge_all(fake, forge) -> None:
    for path in fake.files.values():
        path.write_bytes(forge(HUGE if "huge" in forge.__name__ else LARGE, 50))


def huge_png(h, w):
    return forged_png(h, w)


def huge_tiff(h, w):
    return forged_tiff(h, w)


def large_tiff(h, w):
    return forged_tiff(h, w)


OPEN_CASES = {
    **{f"pcam-{k}": (write_fake_pcam, *v) for k, v in PCAM_CONTENT.items()},
    **{f"hcd-{k}": (write_fake_hcd, *v) for k, v in HCD_CONTENT.items()},
    "hcd-all-headers-60000px": (write_fake_hcd, lambda f: f.root / "train", None),
    "hcd-all-headers-2000px": (write_fake_hcd, lambda f: f.root / "train", None),
}
FORGERIES = {"hcd-all-headers-60000px": huge_tiff, "hcd-all-headers-2000px": large_tiff}


def _assert_one_line_cli(root: Path, named: str, capsys, *options: str) -> None:
    assert main(["data", "summary", str(root), *options]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and named in lines[0], captured.err


@pytest.mark.parametrize("case", sorted(OPEN_CASES))
def test_malformed_file_fails_with_one_line_naming_it(case, tmp_path, capsys):
    writer, target, corrupt = OPEN_CASES[case]
    fake = writer(tmp_path / "set")
    path = target(fake)
    if case in FORGERIES:
        _forge_all(fake, FORGERIES[case])  # the error names the first file of `path`
    else:
        corrupt(path)
    with pytest.raises(DatasetError) as err:
        open_dataset(fake.root)
    message = str(err.value)
    assert "\n" not in message and (path.name in message or str(path) in message), message
    _assert_one_line_cli(fake.root, path.name, capsys)


# -- class 4: single damaged patches: the set opens, reading that patch names its file -------
@pytest.mark.parametrize("forge", [huge_png, huge_tiff, large_tiff])
@pytest.mark.parametrize("writer", [write_fake_hcd, write_fake_idc], ids=["hcd", "idc"])
def test_patch_claiming_a_huge_size_never_allocates(writer, forge, tmp_path):
    fake = writer(tmp_path / "set")
    patch_id, path = sorted(fake.files.items())[0]
    path.write_bytes(forge(HUGE if "huge" in forge.__name__ else LARGE, 50))
    ds = open_dataset(fake.root)
    assert ds.image_size == fake.image_size  # the forged claim never becomes the set's size
    if patch_id in set(ds.meta["id"]):  # HCD: indexed by name, refused when read
        i = int(np.flatnonzero(ds.meta["id"] == patch_id)[0])
        with pytest.raises(DatasetError, match=path.name) as err:
            ds.read_batch([i])
        assert "\n" not in str(err.value)
    else:  # IDC: the PNG header is read while indexing; the file is skipped and reported
        assert any(str(path) in p for p in ds.problems)
    others = np.flatnonzero(ds.meta["id"] != patch_id)
    assert ds.read_batch(others).shape == (len(others), *ds.image_size, 3)


@pytest.mark.parametrize("odd", ["header-1024px", "real-60px"])
def test_one_larger_idc_patch_neither_sets_the_patch_size_nor_hides(odd, tmp_path):
    """A PNG header within the 1024 px cap (or one real 60×60 patch) used to become the set's
    size, so every real 50×50 patch was padded as an edge patch: silently wrong predictions."""
    fake = write_fake_idc(tmp_path / "set")
    patch_id, path = sorted(fake.files.items())[0]
    if odd == "header-1024px":
        path.write_bytes(forged_png(1024, 1024))
    else:
        Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(path)
    ds = open_dataset(fake.root)
    assert ds.image_size == fake.image_size == (50, 50)
    assert patch_id not in set(ds.meta["id"]) and len(ds) == len(fake.files) - 1
    assert any("larger than the set's 50×50 left out" in p and str(path) in p for p in ds.problems)
    batch = ds.read_batch(np.arange(len(ds)))
    assert batch.shape == (len(ds), 50, 50, 3)


def test_an_idc_name_with_a_20_digit_coordinate_is_an_odd_name_not_an_overflow(tmp_path):
    fake = write_fake_idc(tmp_path / "set")
    _, path = sorted(fake.files.items())[0]
    odd = path.with_name(re.sub(r"_x\d+_", "_x" + "9" * 20 + "_", path.name))
    assert odd != path
    path.rename(odd)
    ds = open_dataset(fake.root)  # was: OverflowError, no file named
    assert len(ds) == len(fake.files)
    assert any("file names not" in p and odd.name in p for p in ds.problems)


def test_a_smaller_hcd_patch_is_an_error_naming_it_not_a_padded_edge(tmp_path):
    """HCD has no slide-edge crops: a 50×50 tif among 96×96 ones was padded white, silently."""
    fake = write_fake_hcd(tmp_path / "set")
    patch_id, path = sorted(fake.files.items())[0]
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(path)
    ds = open_dataset(fake.root)
    i = int(np.flatnonzero(ds.meta["id"] == patch_id)[0])
    with pytest.raises(DatasetError, match=f"patch {patch_id} is 50×50, not the set's 96×96"):
        ds.read_batch([i])
    others = np.flatnonzero(ds.meta["id"] != patch_id)
    assert ds.read_batch(others).shape == (len(others), 96, 96, 3)


# -- class 5: things that are not regular files, named like data files -----------------------
@pytest.mark.parametrize("writer", [write_fake_hcd, write_fake_idc], ids=["hcd", "idc"])
@pytest.mark.parametrize("kind", ["fifo", "folder", "broken-link"])
def test_non_regular_entries_are_reported_never_opened(writer, kind, tmp_path, capsys):
    fake = writer(tmp_path / "set")
    first = sorted(fake.files.values())[0]
    odd = first.with_name("odd_idx5_x1_y1_class0" + first.suffix)
    {"fifo": os.mkfifo, "folder": os.mkdir, "broken-link": lambda p: p.symlink_to("nowhere")}[kind](
        odd
    )
    ds = open_dataset(fake.root)
    assert len(ds) == len(fake.files)
    assert any(str(odd) in p for p in ds.problems), ds.problems
    assert ds.read_batch(np.arange(len(ds))).shape[0] == len(ds)
    assert main(["data", "summary", str(fake.root)]) == 0
    assert str(odd) in capsys.readouterr().out


def test_masks_file_that_is_a_fifo_is_one_line(tmp_path):
    fake = write_fake_pcam(tmp_path / "set")
    os.mkfifo(fake.root / "tumour_masks.h5")
    ds = open_dataset(fake.root)
    with pytest.raises(DatasetError, match="FIFO"):
        ds.mask(0)


# -- class 6: names the OS gives as bytes (not UTF-8, control characters) --------------------
@pytest.mark.parametrize("name", [NOT_UTF8 + b"patch", b"new\nline", b"esc\x1b[31m"])
@pytest.mark.parametrize("writer", [write_fake_hcd, write_fake_idc], ids=["hcd", "idc"])
def test_odd_byte_names_are_read_and_shown_printably(writer, name, tmp_path, capsys):
    fake = writer(tmp_path / "set")
    first = sorted(fake.files.values())[0]
    root = os.fsencode(fake.root)
    if fake.format == "idc":  # a patient folder and its file, both named with those bytes
        folder = os.path.join(root, name, b"0")
        os.makedirs(folder)
        target = os.path.join(folder, name + b"_idx5_x1_y1_class0.png")
    else:  # a tif with no csv row: kept as unlabelled
        target = os.path.join(os.fsencode(first.parent), name + b".tif")
    with open(target, "wb") as f:
        f.write(first.read_bytes())
    for _ in range(2):  # built, then from the IDC index cache
        ds = open_dataset(fake.root)
        assert len(ds) == len(fake.files) + 1
        json.dumps(summarize(ds, details=True)).encode("utf-8")  # serialisable, strict UTF-8
        for column in ("id", "patient"):
            shown = ds.meta[column].dropna().astype(str)
            assert shown.map(str.isprintable).all()
            "".join(shown).encode("utf-8")
        assert ds.read_batch(np.arange(len(ds))).shape[0] == len(ds)
    assert main(["data", "summary", str(fake.root)]) == 0
    capsys.readouterr().out.encode("utf-8")


# -- class 7: folders the process cannot list ------------------------------------------------
def test_unlistable_image_folder_is_one_line(tmp_path, monkeypatch):
    fake = write_fake_hcd(tmp_path / "set")
    _unlistable(monkeypatch, fake.root / "train")
    with pytest.raises(DatasetError, match="cannot list") as err:
        open_dataset(fake.root)
    assert str(fake.root / "train") in str(err.value)


@pytest.mark.parametrize(
    "writer,folder",
    [(write_fake_hcd, "test"), (write_fake_idc, "10001/0")],
    ids=["hcd-test", "idc-label-folder"],
)
def test_unlistable_subfolder_is_reported_the_rest_opens(writer, folder, tmp_path, monkeypatch):
    fake = writer(tmp_path / "set")
    _unlistable(monkeypatch, fake.root / folder)
    ds = open_dataset(fake.root)
    assert any("cannot list" in p and folder in p for p in ds.problems), ds.problems
    assert 0 < len(ds) < len(fake.files)


# -- class 8: anything a library raises inside a reader becomes one line --------------------
@pytest.mark.parametrize("fmt", sorted(READERS))
def test_unexpected_reader_errors_become_one_line(fmt, tmp_path, monkeypatch):
    writer = {"pcam": write_fake_pcam, "hcd": write_fake_hcd, "idc": write_fake_idc}[fmt]
    fake = writer(tmp_path / "set")
    ds = open_dataset(fake.root)
    monkeypatch.setattr(type(ds), "_read_native", lambda self, i: 1 / 0)
    with pytest.raises(DatasetError, match="ZeroDivisionError") as err:
        ds.read(0)
    assert ds.source(0).split(" ")[0] in str(err.value)

    def broken(*args, **kwargs):
        raise KeyError("a\nmultiline\nsurprise")

    monkeypatch.setattr(f"core.data.{fmt}.make_meta", broken)
    with pytest.raises(DatasetError) as err:
        open_dataset(fake.root)
    assert "\n" not in str(err.value) and str(fake.root) in str(err.value)


@pytest.mark.parametrize("seed", ["-1", "99999999999", "1.5", "nan"])
def test_split_seed_out_of_range_is_one_line(seed, fake_idc, capsys):
    if seed in ("1.5", "nan"):  # argparse refuses these itself
        with pytest.raises(SystemExit):
            main(["data", "summary", str(fake_idc.root), "--seed", seed])
        return
    with pytest.raises(DatasetError, match="split seed"):
        open_dataset(fake_idc.root, seed=int(seed))
    _assert_one_line_cli(fake_idc.root, "split seed", capsys, "--seed", seed)


def test_damaged_split_manifest_is_redrawn_not_trusted(fake_idc):
    first = open_dataset(fake_idc.root)
    first.manifest_path.write_text('{"assignments": {"10000": "holiday"}}')
    again = open_dataset(fake_idc.root)
    assert again.manifest_id == first.manifest_id
    assert (again.meta["split"] == first.meta["split"]).all()
