"""The base class every reader shares: metadata table, lazy reads, padding, filters, masks.

A reader subclass only has to build its ``meta`` table and implement ``_read_native(i)``.
Ground-truth tumour masks (demo sets only) live in ``tumour_masks.h5`` beside the set:
datasets ``ids`` (N strings) and ``masks`` (N×H×W uint8, 0/1, gzip, one chunk per mask).
A set is synthetic when a ``SYNTHETIC.md`` marker file sits in its root.
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError, printable

# Limits checked on what a file CLAIMS, before anything is allocated from the claim.
MAX_PATCH_SIDE = 1024  # PCam/HCD patches are 96 px, IDC 50 px; a tile this large is not a patch
MAX_PATCHES = 5_000_000  # per file or set; PCam (the largest) has 327,680
MAX_PATCH_FILE_BYTES = 32 * 1024 * 1024  # one patch file; a 1024² RGBA 16-bit TIFF is 8 MB
MAX_CSV_BYTES = 512 * 1024 * 1024

META_COLUMNS = ("id", "split", "label", "patient", "x", "y")
SYNTHETIC_MARKER = "SYNTHETIC.md"
MASKS_FILE = "tumour_masks.h5"
PAD_VALUE = 255  # white, like the glass around tissue


class DatasetError(InputError):
    """Bad input. The message is one line naming the file, what is wrong and the fix."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    path: Path
    format: str
    synthetic: bool

    def label(self, tag_synthetic: bool = True) -> str:
        """How pages list it: "demo/idc (idc, synthetic)"."""
        tag = ", synthetic" if tag_synthetic and self.synthetic else ""
        return f"{self.name} ({self.format}{tag})"


def make_meta(
    ids, split, label, patient=None, x=None, y=None, extra: dict | None = None
) -> pd.DataFrame:
    """The ``meta`` table with the contract's dtypes (nullable ints for x/y)."""
    n = len(ids)
    meta = pd.DataFrame(
        {
            "id": pd.Series(ids, dtype=object).astype(str),
            "split": pd.Series(split if not isinstance(split, str) else [split] * n, dtype=object),
            "label": np.asarray(label, dtype=np.int64),
            "patient": pd.Series([None] * n if patient is None else patient, dtype=object),
            "x": pd.array([pd.NA] * n if x is None else x, dtype="Int64"),
            "y": pd.array([pd.NA] * n if y is None else y, dtype="Int64"),
        }
    )
    for name, values in (extra or {}).items():
        meta[name] = values
    return meta.reset_index(drop=True)


def check_side(size: tuple[int, int], source) -> tuple[int, int]:
    """(h, w) when both sides are 1..MAX_PATCH_SIDE; a DatasetError otherwise."""
    h, w = (int(v) for v in size)
    if not (0 < h <= MAX_PATCH_SIDE and 0 < w <= MAX_PATCH_SIDE):
        raise DatasetError(
            f"{source}: claims {h}×{w} pixels; a patch is 1..{MAX_PATCH_SIDE} px a side "
            "(cut tiles into patches first)."
        )
    return h, w


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_regular(path, max_bytes: int | None = None) -> int:
    """Size of ``path`` when it is a regular file (links followed) of at most ``max_bytes``.

    Never opens the file: a FIFO named like a data file would block every reader forever.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file missing (or a broken link); restore it.") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot stat ({err.strerror}); fix its permissions.") from None
    if not stat.S_ISREG(info.st_mode):
        raise DatasetError(f"{path}: {_kind(info.st_mode)}, not a data file; remove it.")
    if max_bytes is not None and info.st_size > max_bytes:
        raise DatasetError(
            f"{path}: {info.st_size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB "
            "limit for this file; is it the right file?"
        )
    return info.st_size


def read_regular_bytes(path, max_bytes: int = MAX_PATCH_FILE_BYTES) -> bytes:
    """The bytes of a regular file; opened non-blocking and checked with fstat (no FIFO hang,
    no race between the check and the open)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file missing; restore it or re-index the dataset.") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot open ({err.strerror}); fix its permissions.") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DatasetError(f"{path}: {_kind(info.st_mode)}, not a data file; remove it.")
        if info.st_size > max_bytes:
            raise DatasetError(
                f"{path}: {info.st_size / 2**20:.0f} MiB, too large for one patch; "
                "is it the right file?"
            )
        return f.read(max_bytes + 1)


def list_dir(folder) -> list[os.DirEntry]:
    """The entries of ``folder`` sorted by name; a folder we cannot list is a DatasetError."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as err:
        raise DatasetError(
            f"{folder}: cannot list this folder ({err.strerror}); give the server's user read "
            "access to it."
        ) from None


def leaves(path, root) -> bool:
    """Whether ``path`` (under the dataset ``root``) resolves outside it through a link."""
    try:
        return not Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):  # a link loop
        return True


def regular_files(folder, suffix: str, root) -> tuple[list[os.DirEntry], list[str], list[str]]:
    """(regular files ending in ``suffix``, paths of other things named so: FIFOs, folders,
    broken links; links among the files that lead outside the dataset ``root``). The others are
    never opened; readers report them and the outward links as problems."""
    files, others, outward = [], [], []
    for entry in list_dir(folder):
        if entry.name.endswith(suffix):
            try:
                regular = entry.is_file()  # follows links; False for FIFOs and broken links
            except OSError:
                regular = False
            (files if regular else others).append(entry if regular else printable(entry.path))
            if regular and entry.is_symlink() and leaves(entry.path, root):
                outward.append(printable(entry.path))
    return files, others, outward


OUTWARD_LINKS = "links leading outside the dataset (read, but the set is not self-contained)"


def read_csv(path, **kwargs) -> pd.DataFrame:
    """A csv as a DataFrame; any failure (not a regular file, not UTF-8, not csv) is one line."""
    check_regular(path, MAX_CSV_BYTES)
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: the csv is empty; it needs a header row.") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save the csv as UTF-8.") from None
    except Exception as err:  # ParserError, OSError, ...: the csv itself is damaged
        raise DatasetError(
            f"{path}: unreadable csv ({type(err).__name__}: {err}); fix it."
        ) from None


def integer_column(values: pd.Series, source, column: str, allowed=None) -> np.ndarray:
    """``values`` as int64 when every entry is a whole number (in ``allowed`` when given);
    otherwise a DatasetError naming the first bad row (fractions are never truncated)."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers != np.round(numbers))
    if allowed is not None:
        bad |= ~numbers.isin(allowed)
    else:
        bad |= (numbers < 0) | (numbers > 2**62)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        wanted = " or ".join(map(str, allowed)) if allowed is not None else "a whole number ≥ 0"
        raise DatasetError(
            f"{source}: {column} on row {row + 1} is {str(values.iloc[row])[:40]!r}, expected "
            f"{wanted}; fix that row."
        )
    return numbers.to_numpy().astype(np.int64)


def check_unique_ids(ids: pd.Series, source: Path) -> None:
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise DatasetError(
            f"{source}: {len(duplicated)} duplicate ids (e.g. {duplicated.iloc[0]!r}); "
            "keep one row per id."
        )


def to_rgb_uint8(array: np.ndarray, source: Path | str) -> np.ndarray:
    """Accept H×W×3 uint8 (or H×W grey / H×W×4 RGBA uint8); anything else is a DatasetError."""
    if array.dtype != np.uint8:
        raise DatasetError(f"{source}: pixels are {array.dtype}, expected 8-bit RGB (uint8).")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    raise DatasetError(f"{source}: image shape {array.shape}, expected H×W×3 RGB.")


FINGERPRINT_MEMO = 8  # file lists kept per dataset object (splits, "all", a few subsets)


def _stamp(path) -> tuple[int, int, int, int]:
    """(inode, size, mtime, ctime) of a file, all -1 when it is gone or unreadable."""
    try:
        info = os.stat(path)
    except OSError:
        return (-1, -1, -1, -1)
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class PatchDataset:
    """One row of ``meta`` per patch; pixels are read lazily, one patch at a time."""

    format: str = ""
    # Threads per read_batch for one-file-per-patch readers. 1: on 2 cores, 4 threads read a
    # 64-patch IDC/HCD batch 1.3-1.9x slower, warm or cold (the GIL is held for most of a small
    # file's read; bench/data_app_rss.py compares 1 and 4).
    read_threads: int = 1
    seeded_split: bool = True  # the split is drawn with ``seed``; False: the format ships one
    edge_crops: bool = True  # smaller patches are slide-edge crops, padded; False: an error
    # Arrays a reader keeps beside ``meta``, one entry per row (file paths, h5 rows): ``exclude``
    # filters them with ``meta``, so a reader holding one must name it here.
    row_arrays: tuple[str, ...] = ()

    def __init__(
        self,
        root: Path,
        meta: pd.DataFrame,
        image_size: tuple[int, int],
        seed: int = 0,
        manifest_id: str = "",
        problems: list[str] | None = None,
        notes: list[str] | None = None,
    ):
        self.root = Path(root)
        if not 0 < len(meta) <= MAX_PATCHES:
            raise DatasetError(
                f"{self.root}: {len(meta)} patches; a dataset holds 1..{MAX_PATCHES:,} patches."
            )
        self.meta = meta
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.synthetic = (self.root / SYNTHETIC_MARKER).exists()
        self.seed = seed
        self.manifest_id = manifest_id
        self.manifest_path: Path | None = None
        # Problems found while indexing (missing files, unlabelled files, mismatches): shown,
        # never silently dropped. Notes are caveats about the splits (e.g. HCD optimism).
        self.problems = list(problems or [])
        self.notes = list(notes or [])
        # Patches the dataset check's list keeps out (core.data.exclusions), by id.
        self.excluded: tuple[str, ...] = ()
        self.exclusions_path: Path | None = None
        self._masks = None
        self._masks_pid = None
        self._mask_rows: dict[str, int] | None = None

    # -- pixels ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.meta)

    def _read_native(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _check_index(self, i) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"patch index {i} out of range 0..{len(self) - 1}")
        return i

    def data_files(self, indices) -> list:
        """The files patches ``indices`` are read from (labels included); readers override it."""
        return [self.root]

    def data_fingerprint(self, indices) -> str:
        """A hash of the inode, size, mtime and ctime of every file behind ``indices``: caches of
        results computed from those patches key on it, so a file overwritten or truncated in
        place, replaced (even with its old times restored: a new inode or ctime) or removed is
        never served stale (new files change the dataset's index and so its manifest id).

        One ``stat`` per file and call: no directory stamp sees a write inside a file, so there
        is no cheaper aggregate that stays exact. What is cheap is the rest: the sorted, unique
        file list of each set of indices is built once per dataset object."""
        files, names = self._fingerprint_files(np.asarray(indices, dtype=np.int64))
        stamps = np.array([_stamp(path) for path in files], dtype=np.int64)
        # Excluded patches renumber the positions results are stored by: they are part of the key.
        left_out = "\0".join(self.excluded).encode("utf-8", "surrogatepass")
        return hashlib.sha256(names + stamps.tobytes() + left_out).hexdigest()[:16]

    def _fingerprint_files(self, indices: np.ndarray) -> tuple[list, bytes]:
        """(sorted unique files behind ``indices``, digest of their names), memoised."""
        memo = self.__dict__.setdefault("_fingerprint_memo", {})
        key = hashlib.sha256(indices.tobytes()).digest()
        if key not in memo:
            files = sorted(set(self.data_files(indices)), key=os.fsencode)
            names = hashlib.sha256(b"\0".join(map(os.fsencode, files))).digest()
            if len(memo) >= FINGERPRINT_MEMO:  # a few splits per dataset; never unbounded
                memo.clear()
            memo[key] = (files, names)
        return memo[key]

    def source(self, i: int) -> str:
        """Where patch ``i`` is stored (named in errors); readers override it."""
        return f"{self.root} (patch {self.meta.at[i, 'id']})"

    def read(self, i: int) -> np.ndarray:
        """uint8 H×W×3 at the patch's native size; anything wrong is a DatasetError naming
        the file (a damaged file can make a decoder raise almost anything)."""
        i = self._check_index(i)
        try:
            return self._read_native(i)
        except DatasetError:
            raise
        except Exception as err:
            raise DatasetError(
                f"{self.source(i)}: unreadable ({type(err).__name__}: {err}); replace the file."
            ) from None

    def _read_many(self, indices: np.ndarray) -> list[np.ndarray]:
        if self.read_threads > 1 and len(indices) > 8:
            # One file per patch: open/read/decode release the GIL, so threads can overlap
            # the per-file latency of slow storage.
            with ThreadPoolExecutor(self.read_threads) as pool:
                return list(pool.map(self.read, indices))
        return [self.read(i) for i in indices]

    def read_batch(self, indices) -> np.ndarray:
        """uint8 N×h×w×3 at ``image_size``; smaller patches padded bottom/right with white."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        h, w = self.image_size
        out = np.full((len(indices), h, w, 3), PAD_VALUE, dtype=np.uint8)
        # Reading in sorted order keeps disk access sequential; results go back in call order.
        order = np.argsort(indices, kind="stable")
        for slot, patch in zip(order, self._read_many(indices[order]), strict=True):
            ph, pw = patch.shape[:2]
            larger = ph > h or pw > w
            if larger or (not self.edge_crops and (ph, pw) != (h, w)):
                row = self.meta.iloc[int(indices[slot])]
                how = "larger than" if larger else "not"
                fix = " (or be edge crops)." if self.edge_crops else "; replace or remove it."
                raise DatasetError(
                    f"{self.root}: patch {row['id']} is {ph}×{pw}, {how} the set's {h}×{w}; "
                    f"all patches of a set must share one size{fix}"
                )
            out[slot, :ph, :pw] = patch
        return out

    # -- metadata -------------------------------------------------------------------------
    def exclude(self, ids) -> None:
        """Leave the patches ``ids`` out: gone from ``meta``, ``indices`` and every read, the
        others renumbered 0..N-1. ``excluded`` lists them (and ``data_fingerprint`` hashes them
        in, so no cache serves results stored by the old positions). Unknown ids are ignored."""
        drop = self.meta["id"].isin(set(ids)).to_numpy(dtype=bool)
        if not drop.any():
            return
        if drop.all():
            raise DatasetError(f"{self.root}: every patch is excluded; there is nothing to read.")
        self.excluded = tuple(sorted({*self.excluded, *self.meta.loc[drop, "id"]}))
        keep = ~drop
        self.meta = self.meta[keep].reset_index(drop=True)
        for name in self.row_arrays:
            setattr(self, name, getattr(self, name)[keep])
        self.__dict__.pop("_fingerprint_memo", None)  # file lists by position: stale now

    def indices(self, split=None, label=None, patient=None) -> np.ndarray:
        """Positional indices matching every filter given (None = no filter)."""
        keep = np.ones(len(self.meta), dtype=bool)
        for column, wanted in (("split", split), ("label", label), ("patient", patient)):
            if wanted is not None:
                keep &= (self.meta[column] == wanted).to_numpy(dtype=bool, na_value=False)
        return np.flatnonzero(keep)

    # -- ground truth (demo sets) ---------------------------------------------------------
    def _masks_file(self):
        import h5py

        if self._masks is None or self._masks_pid != os.getpid():
            path = self.root / MASKS_FILE
            if not path.exists():
                return None
            check_regular(path)
            self._masks = h5py.File(path, "r")
            self._masks_pid = os.getpid()
            ids = self._masks["ids"].asstr()[:]
            self._mask_rows = {str(k): j for j, k in enumerate(ids)}
        return self._masks

    def mask(self, i: int) -> np.ndarray | None:
        """Ground-truth tumour mask (bool, native patch size) or None when the set has none."""
        i = self._check_index(i)
        try:
            return self._mask(i)
        except DatasetError:
            raise
        except Exception as err:
            raise DatasetError(
                f"{self.root / MASKS_FILE}: unreadable ({type(err).__name__}: {err}); "
                "delete it or rewrite the demo."
            ) from None

    def _mask(self, i: int) -> np.ndarray | None:
        masks = self._masks_file()
        if masks is None:
            return None
        row = self._mask_rows.get(str(self.meta.at[i, "id"]))
        if row is None:
            return None
        mask = masks["masks"][row].astype(bool)
        if "height" in self.meta.columns:  # edge patches: the stored mask is padded
            return mask[: int(self.meta.at[i, "height"]), : int(self.meta.at[i, "width"])]
        return mask

    # -- pickling (DataLoader workers): h5 handles never cross a process boundary ----------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_masks"] = None
        state["_masks_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)})"
