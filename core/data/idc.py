"""IDC (invasive ductal carcinoma, breast) in its native Kaggle layout.

On disk::

    <root>/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png     50×50 RGB (smaller at
                                                                      slide edges)

X/Y are the patch's top-left pixel in the slide; C is the label (1 = IDC tumour) and must agree
with the folder it sits in. The file index is built once with ``os.scandir`` plus a 24-byte PNG
header read per file (for patch sizes), and cached as parquet under
``config.cache_dir()/idc_index/`` keyed by the tree's directory mtimes (adding or removing a file
changes its folder's mtime). Splits are by patient: no patient is on two sides.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from core import config
from core.data.base import (
    MAX_PATCH_SIDE,
    OUTWARD_LINKS,
    DatasetError,
    PatchDataset,
    leaves,
    list_dir,
    make_meta,
    regular_files,
)
from core.data.imageio import png_size, read_image
from core.data.splits import manifest_split, patient_strata
from core.errors import printable
from core.files import write_atomic

NAME_PATTERN = re.compile(  # coordinates of up to 9 digits: a slide is never 10⁹ px wide
    r"^(?P<patient>.+)_idx5_x(?P<x>\d{1,9})_y(?P<y>\d{1,9})_class(?P<c>[01])\.png$"
)
LABEL_FOLDERS = ("0", "1")
EXAMPLES = 3


def _subdirs(path: Path) -> list[os.DirEntry]:
    return [e for e in list_dir(path) if e.is_dir()]


def looks_like_idc(root: Path) -> bool:
    try:
        patients = _subdirs(Path(root))
    except DatasetError:
        return False
    return any(
        os.path.isdir(os.path.join(p.path, label)) for p in patients[:20] for label in LABEL_FOLDERS
    )


def _label_dirs(root: Path) -> list[tuple[str, str, str]]:
    """(patient, label, folder path) for every <patient>/<0|1> folder. The patient is the
    folder's printable name; the path keeps the OS's bytes."""
    return [
        (printable(patient.name), label, os.path.join(patient.path, label))
        for patient in _subdirs(root)
        for label in LABEL_FOLDERS
        if os.path.isdir(os.path.join(patient.path, label))
    ]


def _tree_key(root: Path, label_dirs) -> str:
    digest = hashlib.sha1(os.fsencode(root.resolve()))
    for _, _, folder in label_dirs:
        digest.update(os.fsencode(folder) + f":{os.stat(folder).st_mtime_ns}".encode())
    digest.update(str(os.stat(root).st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def _valid_size(size) -> bool:
    return size is not None and 0 < size[0] <= MAX_PATCH_SIDE and 0 < size[1] <= MAX_PATCH_SIDE


def _scan(root: Path, label_dirs) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The index table, the skipped entries (not PNGs, oversized headers, FIFOs, folders that
    cannot be listed) and the links leading outside the dataset, each as a printable line."""
    rows, skipped, outward = [], [], []
    for patient, label, folder in label_dirs:
        if leaves(folder, root):
            outward.append(printable(folder))
        try:
            files, others, links = regular_files(folder, ".png", root)
        except DatasetError as err:
            skipped.append(str(err))
            continue
        skipped += [f"{p} (not a file)" for p in others]
        outward += links
        for entry in files:
            size = png_size(entry.path)
            name = printable(entry.name)
            if not _valid_size(size):
                skipped.append(printable(entry.path))
                continue
            # the path stays bytes: pandas' arrow strings refuse names that are not UTF-8
            rows.append((os.fsencode(entry.path), patient, int(label), name, *size))
    table = pd.DataFrame(
        rows, columns=["path", "patient", "folder_label", "name", "height", "width"]
    )
    parsed = table["name"].str.extract(NAME_PATTERN)
    table["name_patient"] = parsed["patient"]
    table["name_label"] = pd.to_numeric(parsed["c"]).astype("Int64")
    table["x"] = pd.to_numeric(parsed["x"]).astype("Int64")
    table["y"] = pd.to_numeric(parsed["y"]).astype("Int64")
    return table.sort_values("path", ignore_index=True), sorted(skipped), sorted(outward)


def _index_path(root: Path, key: str) -> Path:
    return config.cache_dir() / "idc_index" / f"{key}.parquet"


def load_index(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """The file index (cached parquet) and the unreadable files found while building it."""
    root = Path(root)
    label_dirs = _label_dirs(root)
    if not label_dirs:
        raise DatasetError(f"{root}: no <patient>/0 or <patient>/1 folders; point at the IDC root.")
    path = _index_path(root, _tree_key(root, label_dirs))
    if path.exists():
        try:
            table = pd.read_parquet(path)
            table["path"] = table["path"].map(os.fsencode)  # older caches stored str
            return table, list(table.attrs.get("unreadable", []))
        except Exception:  # damaged cache file: rebuild it below
            pass
    table, unreadable, outward = _scan(root, label_dirs)
    table.attrs["outward"] = outward  # links leaving the dataset, reported by _problems
    try:
        table.attrs["unreadable"] = unreadable
        write_atomic(path, lambda fh: table.to_parquet(fh, index=False))
    except OSError:  # read-only cache: still usable, just re-indexed next time
        pass
    return table, unreadable


def _report(what: str, examples) -> str:
    examples = list(examples)
    shown = ", ".join(printable(os.fsdecode(e)) for e in examples[:EXAMPLES])
    return f"{len(examples)} {what}, e.g. {shown}"


def _patch_size(table: pd.DataFrame) -> tuple[int, int]:
    """The set's patch size: the most common (height, width). Slide-edge patches are smaller;
    the largest header would let one odd file (or a forged 1024² header) make every real patch
    an edge patch, padded and resized, with silently wrong predictions."""
    counts = table.groupby(["height", "width"]).size()
    height, width = counts.idxmax()
    return int(height), int(width)


def _problems(table: pd.DataFrame, unreadable: list[str]) -> list[str]:
    problems = []
    if table.attrs.get("outward"):
        problems.append(_report(OUTWARD_LINKS, table.attrs["outward"]))
    if unreadable:
        problems.append(
            _report("entries skipped (not PNGs, not files, or over 1024 px a side)", unreadable)
        )
    odd_name = table["name_label"].isna()
    if odd_name.any():
        problems.append(
            _report(
                "file names not <patient>_idx5_x<X>_y<Y>_class<C>.png (kept, label from folder)",
                table.loc[odd_name, "path"],
            )
        )
    mismatch = ~odd_name & (table["name_label"] != table["folder_label"]).fillna(False)
    if mismatch.any():
        problems.append(
            _report(
                "files whose class<C> disagrees with their folder (folder label used)",
                table.loc[mismatch, "path"],
            )
        )
    other_patient = ~odd_name & (table["name_patient"] != table["patient"]).fillna(False)
    if other_patient.any():
        problems.append(
            _report(
                "files named for another patient than their folder",
                table.loc[other_patient, "path"],
            )
        )
    return problems


def _check_unique_names(ids: pd.Series, paths: pd.Series, root: Path) -> None:
    """The same file name in two folders would give two patches one id."""
    repeated = ids.duplicated(keep=False)
    if repeated.any():
        first = ids[repeated].iloc[0]
        where = " and ".join(os.fsdecode(p) for p in paths[ids == first].iloc[:2])
        raise DatasetError(
            f"{root}: {int(ids[repeated].nunique())} duplicate ids, e.g. {where}; keep one copy."
        )


class IDCDataset(PatchDataset):
    format = "idc"
    row_arrays = ("_paths",)

    def __init__(self, root, seed: int = 0, fractions=(0.7, 0.15, 0.15)):
        root = Path(root)
        table, unreadable = load_index(root)
        if table.empty:
            raise DatasetError(f"{root}: patient folders hold no .png patches.")
        problems = _problems(table, unreadable)
        side = _patch_size(table)
        larger = (table["height"] > side[0]) | (table["width"] > side[1])
        if larger.any():
            problems.append(
                _report(
                    f"patches larger than the set's {side[0]}×{side[1]} left out (slide-edge "
                    "patches are smaller, never larger)",
                    table.loc[larger, "path"],
                )
            )
            table = table[~larger].reset_index(drop=True)
        ids = table["name"].str.slice(0, -4)
        _check_unique_names(ids, table["path"], root)
        positive = table.groupby("patient")["folder_label"].mean()
        assignments, manifest_id, manifest_path = manifest_split(
            "idc",
            root,
            positive.index.to_series(),
            patient_strata(positive),
            seed,
            fractions,
            "patient",
        )
        meta = make_meta(
            ids=ids.tolist(),
            split=table["patient"].map(assignments).tolist(),
            label=table["folder_label"].to_numpy(),
            patient=table["patient"].tolist(),
            x=table["x"],
            y=table["y"],
            extra={"height": table["height"].to_numpy(), "width": table["width"].to_numpy()},
        )
        super().__init__(
            root,
            meta,
            side,
            seed=seed,
            manifest_id=manifest_id,
            problems=problems,
        )
        self.manifest_path = manifest_path
        self._paths = table["path"].to_numpy()

    @property
    def edge_patches(self) -> int:
        """Patches smaller than the set's patch size (slide edges); kept, padded when batched."""
        h, w = self.image_size
        return int(((self.meta["height"] < h) | (self.meta["width"] < w)).sum())

    def data_files(self, indices) -> list:
        return list(self._paths[indices])

    def source(self, i: int) -> str:
        return printable(os.fsdecode(self._paths[i]))

    def _read_native(self, i: int) -> np.ndarray:
        return read_image(os.fsdecode(self._paths[i]))
