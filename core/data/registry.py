"""Format registry: name -> (detector, reader). Detection order matters: PCam and HCD are
recognised by their files, IDC by its <patient>/<0|1> folders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import config
from core.data.base import SYNTHETIC_MARKER, DatasetEntry, DatasetError, PatchDataset
from core.data.exclusions import apply_exclusions
from core.data.hcd import HCDDataset, looks_like_hcd
from core.data.idc import IDCDataset, looks_like_idc
from core.data.pcam import PCamDataset, looks_like_pcam
from core.errors import printable


@dataclass(frozen=True)
class Reader:
    detect: Callable[[Path], bool]
    dataset: type[PatchDataset]


READERS: dict[str, Reader] = {
    "pcam": Reader(looks_like_pcam, PCamDataset),
    "hcd": Reader(looks_like_hcd, HCDDataset),
    "idc": Reader(looks_like_idc, IDCDataset),
}


def detect_format(path) -> str:
    """ "pcam" | "hcd" | "idc"; a DatasetError saying what was looked for otherwise, and where
    the dataset is when it sits one level down (a download's wrapper folder) or one level up
    (one IDC patient's folder)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such folder; give the folder that holds the dataset.")
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder; give the folder that holds the dataset.")
    found = _format_of(path)
    if found:
        return found
    raise DatasetError(
        f"{path}: not a dataset (no camelyonpatch_*.h5, no id,label csv with .tif files, "
        "no <patient>/<0|1>/*.png folders)." + _where_to_look(path)
    )


def _format_of(path: Path) -> str | None:
    for name, reader in READERS.items():
        try:
            if reader.detect(path):
                return name
        except OSError as err:
            raise DatasetError(f"{path}: cannot look inside ({err.strerror}); check it.") from None
    return None


def _subfolders(path: Path) -> list[Path]:
    """Visible subfolders, sorted (OSError when ``path`` cannot be listed)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


HINT_SUBFOLDERS = 50  # a folder with more is not a download's wrapper: no hint, no long scan


def _where_to_look(path: Path) -> str:
    """A hint for a folder that is not a dataset: the datasets among its subfolders (e.g.
    Kaggle's IDC_regular_ps50_idx5/), or its parent when it is one IDC patient's folder."""
    try:
        subfolders = _subfolders(path)
    except OSError:
        return ""
    if {p.name for p in subfolders} & {"0", "1"} and looks_like_idc(path.parent):
        above = printable(str(path.parent))
        return f" It looks like one IDC patient's folder: give the folder above it, {above}."
    if len(subfolders) > HINT_SUBFOLDERS:
        return ""
    inside = []
    for sub in subfolders:
        try:
            fmt = _format_of(sub)
        except DatasetError:
            continue
        if fmt:
            inside.append(f"{printable(str(sub))} ({fmt.upper()})")
    if not inside:
        return ""
    shown = ", ".join(inside[:3]) + (f" and {len(inside) - 3} more" if len(inside) > 3 else "")
    which = "that folder" if len(inside) == 1 else "one of them"
    return f" A dataset is one level down: {shown}; give {which}."


MAX_SEED = 2**31 - 1


def open_dataset(
    path,
    seed: int = 0,
    fractions=(0.7, 0.15, 0.15),
    format: str | None = None,
    exclusions: bool = True,
):
    """The dataset at ``path``, without the patches its exclusion list keeps out
    (core.data.exclusions; ``exclusions=False`` keeps every patch: the dataset check reads them
    all). Every failure is a one-line DatasetError: the readers check what they know, and
    anything else a damaged file makes a library raise is caught here."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= MAX_SEED
    ):
        raise DatasetError(f"split seed {seed!r}: use a whole number from 0 to {MAX_SEED}.")
    fmt = format or detect_format(path)
    if fmt not in READERS:
        raise DatasetError(f"{path}: unknown format {fmt!r}; use one of {sorted(READERS)}.")
    try:
        ds = READERS[fmt].dataset(Path(path), seed=int(seed), fractions=fractions)
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(
            f"{path}: cannot be read as {fmt.upper()} ({type(err).__name__}: {err}); "
            "check its files against the layout in the README."
        ) from None
    if exclusions:
        apply_exclusions(ds)
    return ds


def _candidates(root: Path, depth: int):
    yield root
    if depth == 0:
        return
    try:
        children = _subfolders(root)
    except OSError:
        return
    for child in children:
        yield from _candidates(child, depth - 1)


def list_datasets(root=None, depth: int = 2) -> list[DatasetEntry]:
    """Datasets at or below ``root`` (default: the data root), e.g. demo/pcam, demo/hcd."""
    root = Path(root) if root is not None else config.data_root()
    if not root.is_dir():
        return []
    entries, claimed = [], []
    for path in _candidates(root, depth):
        if any(config.is_within(path, done) for done in claimed):
            continue  # inside a dataset already found (e.g. IDC patient folders)
        if config.leaves_its_entry(path, root):
            continue  # the typed box refuses it too (one data-root rule, see core.config)
        try:
            fmt = _format_of(path)
        except DatasetError:
            continue
        if fmt is None:
            continue
        claimed.append(path)
        name = dataset_name(path, root)
        entries.append(DatasetEntry(name, path, fmt, (path / SYNTHETIC_MARKER).exists()))
    return entries


def dataset_name(path, root=None) -> str:
    """How every page names a dataset: its folder relative to the data root ("demo/idc",
    "real/idc"); a folder elsewhere by its last two parts, so two IDC sets never read the same."""
    path, root = Path(path), Path(root) if root is not None else config.data_root()
    for p, r in ((path.absolute(), root.absolute()), (path.resolve(), root.resolve())):
        if p.is_relative_to(r):
            return printable(p.relative_to(r).as_posix() if p != r else p.name)
    return printable("/".join(path.absolute().parts[-2:]))
