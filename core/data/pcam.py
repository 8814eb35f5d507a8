"""PatchCamelyon (PCam) in its published HDF5 layout.

On disk (any subset of the three splits; each split needs both files)::

    camelyonpatch_level_2_split_{train,valid,test}_x.h5   dataset "x": N×96×96×3 uint8
    camelyonpatch_level_2_split_{train,valid,test}_y.h5   dataset "y": N×1×1×1 uint8 (0/1)
    camelyonpatch_level_2_split_{split}_meta.csv          optional: coord_y, coord_x,
                                                         tumor_patch, center_tumor_patch, wsi
                                                         (flags kept as extra meta columns)

Label 1 (tumour) means at least one tumour pixel in the centre 32×32 of the patch. Patch ids are
``<split>_<row>``; with the meta csv, ``patient`` is the source slide (``wsi``) and x/y its
coordinates. Labels are read once at open; pixels are read one patch at a time from an h5 handle
opened lazily in each process (h5py handles don't survive fork), never the whole array, and never
by fancy indexing of scattered rows (~15× slower than a loop of single reads on these files).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.base import (
    MAX_PATCHES,
    OUTWARD_LINKS,
    DatasetError,
    PatchDataset,
    check_regular,
    check_side,
    integer_column,
    leaves,
    make_meta,
    read_csv,
)
from core.data.splits import SPLIT_NAMES
from core.errors import printable

PREFIX = "camelyonpatch_level_2_split_"
CHUNK_CACHE_BYTES = 8 * 1024 * 1024  # room for whole compressed chunks: no re-decompression
# DEFLATE (HDF5's gzip filter) cannot expand data more than ~1032:1, so an array that claims more
# bytes than this many times its file's size is a lie (unwritten chunks, a forged shape).
MAX_EXPANSION = 1100


def split_file(root: Path, split: str, kind: str) -> Path:
    return Path(root) / f"{PREFIX}{split}_{kind}.h5"


def looks_like_pcam(root: Path) -> bool:
    return any(Path(root).glob(f"{PREFIX}*.h5")) or any(Path(root).glob(f"{PREFIX}*.h5.gz"))


def _open_h5(path: Path):
    import h5py

    check_regular(path)
    try:
        return h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
    except Exception as err:
        raise DatasetError(
            f"{path}: not a readable HDF5 file ({err.__class__.__name__}); "
            "re-download it (it may be truncated or corrupt)."
        ) from None


def _dataset(h5file, key: str, path: Path):
    import h5py

    found = h5file.get(key)
    if found is None:
        raise DatasetError(f"{path}: no dataset {key!r} inside; expected PCam's '{key}' array.")
    if not isinstance(found, h5py.Dataset):
        raise DatasetError(f"{path}: {key!r} is a group, not an array; expected PCam's '{key}'.")
    if found.ndim == 0:
        raise DatasetError(f"{path}: {key!r} is a single value; expected one row per patch.")
    if found.shape[0] > MAX_PATCHES:
        raise DatasetError(
            f"{path}: {key!r} claims {found.shape[0]:,} rows, over the {MAX_PATCHES:,} limit; "
            "is it the right file?"
        )
    claimed = found.size * found.dtype.itemsize
    if claimed > MAX_EXPANSION * max(path.stat().st_size, 1):
        raise DatasetError(
            f"{path}: {key!r} claims {claimed / 2**20:,.0f} MiB of data in a "
            f"{path.stat().st_size / 2**20:,.1f} MiB file (truncated or forged); re-download it."
        )
    return found


def _check_images(x, path: Path) -> tuple[int, tuple[int, int]]:
    if x.dtype != np.uint8:
        raise DatasetError(f"{path}: 'x' is {x.dtype}, expected uint8 RGB patches.")
    if x.ndim != 4 or x.shape[3] != 3:
        raise DatasetError(f"{path}: 'x' has shape {x.shape}, expected N×H×W×3.")
    return x.shape[0], check_side(x.shape[1:3], path)


def _read_labels(path: Path, n_images: int, x_path: Path) -> np.ndarray:
    with _open_h5(path) as f:
        y = _dataset(f, "y", path)
        if y.shape[0] != n_images:
            raise DatasetError(
                f"{path}: {y.shape[0]} labels but {x_path.name} has {n_images} patches; "
                "use the x/y files of the same split and download."
            )
        if y.size != n_images or y.dtype.kind not in "biuf":
            raise DatasetError(
                f"{path}: 'y' is {y.dtype} of shape {y.shape}; expected one 0/1 number per "
                "patch (N×1×1×1)."
            )
        try:
            labels = np.asarray(y[()]).reshape(-1)
        except Exception:
            raise DatasetError(f"{path}: labels unreadable (truncated?); re-download it.") from None
    return integer_column(pd.Series(labels.astype(np.float64)), path, "label", allowed=(0, 1))


def _read_meta_csv(root: Path, split: str, n: int) -> pd.DataFrame | None:
    path = Path(root) / f"{PREFIX}{split}_meta.csv"
    if not path.exists():
        return None
    table = read_csv(path)
    missing = {"coord_x", "coord_y", "wsi"} - set(table.columns)
    if missing:
        raise DatasetError(f"{path}: missing columns {sorted(missing)}; expected PCam's meta csv.")
    if len(table) != n:
        raise DatasetError(f"{path}: {len(table)} rows but the split has {n} patches.")
    for column in ("coord_x", "coord_y"):
        table[column] = integer_column(table[column], path, column)
    empty = table["wsi"].isna() | (table["wsi"].astype(str).str.strip() == "")
    if empty.any():  # the slide is what patient-level statistics group by
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(empty)[:3])  # +2: header, 1-based
        raise DatasetError(
            f"{path}: {int(empty.sum())} rows with an empty wsi (slide name), e.g. line {rows}; "
            "fill them or remove the meta csv."
        )
    return table


def _tumour_flags(table: pd.DataFrame) -> dict:
    """PCam's meta csv flags: any tumour in the patch / in its centre 32×32 (when present)."""
    flags = ("tumor_patch", "center_tumor_patch")
    return {
        name: table[name].astype(str).str.lower().isin(("true", "1")).to_numpy()
        for name in flags
        if name in table
    }


def _check_gzipped(root: Path) -> None:
    for gz in sorted(Path(root).glob(f"{PREFIX}*.h5.gz")):
        if not gz.with_suffix("").exists():
            raise DatasetError(
                f"{gz}: PCam is published gzip-compressed; run `gunzip {gz.name}` first "
                "(h5py cannot read .h5.gz)."
            )


def _split_meta(root: Path, split: str) -> tuple[pd.DataFrame, tuple[int, int]] | None:
    x_path, y_path = split_file(root, split, "x"), split_file(root, split, "y")
    if not x_path.exists() and not y_path.exists():
        return None
    for need, other in ((x_path, y_path), (y_path, x_path)):
        if not need.exists():
            raise DatasetError(f"{need}: missing (found {other.name}); put both files in {root}.")
    with _open_h5(x_path) as f:
        n, size = _check_images(_dataset(f, "x", x_path), x_path)
    labels = _read_labels(y_path, n, x_path)
    extra = _read_meta_csv(root, split, n)
    meta = make_meta(
        ids=[f"{split}_{i}" for i in range(n)],
        split=split,
        label=labels,
        patient=None if extra is None else extra["wsi"].astype(str).map(printable).tolist(),
        x=None if extra is None else extra["coord_x"].tolist(),
        y=None if extra is None else extra["coord_y"].tolist(),
        extra=None if extra is None else _tumour_flags(extra),
    )
    meta["row"] = np.arange(n)
    return meta, size


class PCamDataset(PatchDataset):
    format = "pcam"
    seeded_split = False  # the official train/valid/test files
    row_arrays = ("_rows", "_splits")

    def __init__(self, root, seed: int = 0, fractions=(0.7, 0.15, 0.15)):
        root = Path(root)
        _check_gzipped(root)
        parts, sizes = [], set()
        for split in SPLIT_NAMES:
            found = _split_meta(root, split)
            if found is not None:
                parts.append(found[0])
                sizes.add(found[1])
        if not parts:
            raise DatasetError(f"{root}: no {PREFIX}<split>_x.h5 / _y.h5 files found.")
        outward = [printable(str(p)) for p in sorted(root.glob(f"{PREFIX}*")) if leaves(p, root)]
        if len(sizes) > 1:
            raise DatasetError(f"{root}: splits have different patch sizes {sorted(sizes)}.")
        super().__init__(
            root,
            pd.concat(parts, ignore_index=True),
            sizes.pop(),
            seed=seed,
            manifest_id="pcam-official",
            problems=[f"{len(outward)} {OUTWARD_LINKS}: {', '.join(outward)}"] if outward else [],
        )
        # fractions are ignored: PCam ships official splits.
        self._rows = self.meta["row"].to_numpy()
        self._splits = self.meta["split"].to_numpy()
        self._handles: dict = {}
        self._pid: int | None = None

    def _images(self, split: str):
        if self._pid != os.getpid():  # first access in this process (or a forked worker)
            self._handles, self._pid = {}, os.getpid()
        if split not in self._handles:
            path = split_file(self.root, split, "x")
            h5file = _open_h5(path)  # kept with its dataset so the handle has an owner
            self._handles[split] = (h5file, _dataset(h5file, "x", path))
        return self._handles[split][1]

    def data_files(self, indices) -> list:
        files = []
        for split in np.unique(self._splits[indices]):
            files += [split_file(self.root, split, kind) for kind in ("x", "y")]
            files.append(Path(self.root) / f"{PREFIX}{split}_meta.csv")
        return files

    def source(self, i: int) -> str:
        return f"{split_file(self.root, self._splits[i], 'x')} (row {self._rows[i]})"

    def _read_native(self, i: int) -> np.ndarray:
        try:
            return self._images(self._splits[i])[int(self._rows[i])]
        except OSError:
            raise DatasetError(
                f"{self.source(i)}: unreadable (truncated or corrupt file); re-download it."
            ) from None

    def __getstate__(self):
        state = super().__getstate__()
        state["_handles"], state["_pid"] = {}, None
        return state
