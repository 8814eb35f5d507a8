"""Kaggle Histopathologic Cancer Detection (HCD): 96×96 RGB TIFF patches plus a label CSV.

Two layouts are accepted::

    Kaggle download:  <root>/train_labels.csv (id,label)  <root>/train/<id>.tif
                      optional <root>/sample_submission.csv + <root>/test/<id>.tif  (unlabelled)
    flat folder:      <root>/<any>.csv (id,label)  <root>/<id>.tif

Label 1 (tumour) = at least one tumour pixel in the centre 32×32. Labelled patches are split
train/valid/test (seeded, stratified by label); HCD has no slide ids, so that split is optimistic
(``ds.notes`` says so). CSV ids with no file and files with no CSV row are listed in
``ds.problems``; unlabelled files are kept with split "unlabelled" and label -1.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.base import (
    OUTWARD_LINKS,
    DatasetError,
    PatchDataset,
    check_unique_ids,
    integer_column,
    make_meta,
    read_csv,
    regular_files,
)
from core.data.imageio import image_size_of, read_image
from core.data.splits import HCD_OPTIMISM_NOTE, UNLABELLED, manifest_split
from core.errors import printable

LABELS_CSV = "train_labels.csv"
SUBMISSION_CSV = "sample_submission.csv"
EXAMPLES = 3


def _tif_files(folder: Path, root: Path) -> tuple[dict[str, str], list[str]]:
    """({id: file name}, problems). Ids are the printable names (a name that is not UTF-8
    keeps its bytes in the file name); FIFOs and other non-files named *.tif are reported, and
    so are links leading outside the dataset."""
    files, others, outward = regular_files(folder, ".tif", root)
    found = {printable(e.name[:-4]): e.name for e in files}
    problems = [
        _summarise_missing(kind, paths, folder)
        for kind, paths in (
            ("*.tif entries that are not files (skipped)", others),
            (OUTWARD_LINKS, outward),
        )
        if paths
    ]
    return dict(sorted(found.items())), problems


def _label_csvs(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).glob("*.csv") if p.name != SUBMISSION_CSV)


def looks_like_hcd(root: Path) -> bool:
    root = Path(root)
    if (root / LABELS_CSV).exists() and (root / "train").is_dir():
        return True
    return bool(_label_csvs(root)) and any(root.glob("*.tif"))


def _layout(root: Path) -> tuple[Path, Path]:
    """(labels csv, folder of labelled tifs)."""
    if (root / LABELS_CSV).exists() and (root / "train").is_dir():
        return root / LABELS_CSV, root / "train"
    csvs = _label_csvs(root)
    if not csvs:
        raise DatasetError(f"{root}: no label csv (id,label) found; add train_labels.csv.")
    if len(csvs) > 1:
        raise DatasetError(f"{root}: several csv files {[p.name for p in csvs]}; keep one.")
    return csvs[0], root


def _read_labels(path: Path) -> pd.DataFrame:
    table = read_csv(path, dtype={"id": str})
    if not {"id", "label"} <= set(table.columns):
        raise DatasetError(
            f"{path}: columns {list(table.columns)[:5]}, expected 'id' and 'label' (a header row)."
        )
    if table["id"].isna().any():
        row = int(np.flatnonzero(table["id"].isna().to_numpy())[0])
        raise DatasetError(f"{path}: empty id on row {row + 1}; every row needs an id.")
    check_unique_ids(table["id"], path)
    labels = integer_column(table["label"], path, "label", allowed=(0, 1))
    return pd.DataFrame({"id": table["id"].astype(str), "label": labels})


def _summarise_missing(kind: str, ids: list[str], where: Path) -> str:
    shown = ", ".join(printable(str(i)) for i in ids[:EXAMPLES])
    return printable(f"{len(ids)} {kind} ({where}), e.g. {shown}")


def _common_size(paths: list[Path]) -> tuple[int, int]:
    """The set's patch size: the most common header size among a few files (one odd or
    unreadable file must not decide it; it fails when read, naming itself)."""
    sizes = []
    for path in paths:
        try:
            sizes.append(image_size_of(path))
        except DatasetError:
            continue
    if not sizes:
        return image_size_of(paths[0])  # raises, naming the file
    return Counter(sizes).most_common(1)[0][0]


def _check_submission(root: Path, test_ids) -> list[str]:
    """Kaggle's sample_submission.csv lists the test ids: report those without a file."""
    path = root / SUBMISSION_CSV
    if not path.exists():
        return []
    try:
        table = read_csv(path, dtype={"id": str})
    except DatasetError as err:
        return [str(err)]
    if "id" not in table.columns:
        return [f"{path}: no 'id' column; test/ files kept as unlabelled without a check"]
    missing = sorted(set(table["id"].dropna()) - set(test_ids))
    return (
        [_summarise_missing("submission ids with no test/ .tif", missing, path)] if missing else []
    )


def _test_files(root: Path, image_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Kaggle's unlabelled test/ folder; one that cannot be listed is reported, not fatal."""
    if image_dir == root or not (root / "test").is_dir():
        return {}, []
    try:
        return _tif_files(root / "test", root)
    except DatasetError as err:
        return {}, [str(err)]


class HCDDataset(PatchDataset):
    format = "hcd"
    edge_crops = False  # Kaggle's patches are all 96×96: a smaller one is not a slide edge
    row_arrays = ("_paths",)

    def __init__(self, root, seed: int = 0, fractions=(0.7, 0.15, 0.15)):
        root = Path(root)
        labels_csv, image_dir = _layout(root)
        labels = _read_labels(labels_csv)
        files, problems = _tif_files(image_dir, root)
        if not files:
            raise DatasetError(f"{image_dir}: no .tif files; put the <id>.tif patches there.")
        problems += self._cross_check(labels, list(files), labels_csv, image_dir)
        labelled = labels[labels["id"].isin(set(files))].reset_index(drop=True)
        unlabelled = sorted(set(files) - set(labels["id"]))
        assignments, manifest_id, manifest_path = manifest_split(
            "hcd", root, labelled["id"], labelled["label"].to_numpy(), seed, fractions, "id"
        )
        test_files, test_problems = _test_files(root, image_dir)
        problems += test_problems + _check_submission(root, test_files)
        ids = labelled["id"].tolist() + unlabelled + list(test_files)
        meta = make_meta(
            ids=ids,
            split=[assignments[i] for i in labelled["id"]]
            + [UNLABELLED] * (len(unlabelled) + len(test_files)),
            label=labelled["label"].tolist() + [-1] * (len(unlabelled) + len(test_files)),
        )
        train_paths = [image_dir / files[i] for i in labelled["id"].tolist() + unlabelled]
        self._paths = np.array(
            train_paths + [root / "test" / name for name in test_files.values()], dtype=object
        )
        check_unique_ids(meta["id"], root)
        size = _common_size([image_dir / name for name in list(files.values())[:20]])
        super().__init__(
            root,
            meta,
            size,
            seed=seed,
            manifest_id=manifest_id,
            problems=problems,
            notes=[HCD_OPTIMISM_NOTE],
        )
        self.manifest_path = manifest_path
        self._labels_csv = labels_csv

    @staticmethod
    def _cross_check(labels, files, labels_csv: Path, image_dir: Path) -> list[str]:
        problems = []
        file_set, label_set = set(files), set(labels["id"])
        no_file = sorted(label_set - file_set)
        if no_file:
            problems.append(_summarise_missing("ids in the csv with no .tif", no_file, labels_csv))
        no_label = sorted(file_set - label_set)
        if no_label:
            problems.append(
                _summarise_missing(
                    "tif files with no label (kept as unlabelled)", no_label, image_dir
                )
            )
        return problems

    def data_files(self, indices) -> list:
        return [self._labels_csv, *self._paths[indices]]

    def source(self, i: int) -> str:
        return printable(str(self._paths[i]))

    def _read_native(self, i: int) -> np.ndarray:
        return read_image(self._paths[i])
