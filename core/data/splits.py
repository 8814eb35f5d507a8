"""Seeded train/valid/test splits saved as manifests and reused.

A manifest is JSON under ``config.cache_dir()/splits/<manifest_id>.json``::

    {"manifest_id": ..., "format": "idc", "root": "...", "seed": 0,
     "fractions": [0.7, 0.15, 0.15], "unit": "patient" | "id",
     "assignments": {"<patient or id>": "train" | "valid" | "test", ...}}

The id is a hash of (format, root, seed, fractions, the sorted units), so the same data with the
same seed always maps to the same manifest, and a saved manifest is reused rather than redrawn.
IDC is split by patient (stratified by each patient's positive fraction), so no patient is on
two sides; HCD has no slide ids, so it is split per patch (stratified by label).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from core import config
from core.files import write_json_atomic

SPLIT_NAMES = ("train", "valid", "test")  # the one list of split names
UNLABELLED = "unlabelled"  # the split of patches without a label (HCD test files)
ALL_SPLITS = (*SPLIT_NAMES, UNLABELLED)
HCD_OPTIMISM_NOTE = (
    "HCD has no slide or patient ids, so its train/valid/test split is per patch: patches of "
    "one slide can fall on both sides and validation scores are optimistic."
)


def _check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    return fractions


def _split_counts(n: int, fractions) -> tuple[int, int, int]:
    """Whole counts per split; valid/test get at least one unit when asked for and n allows."""
    n_valid = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:
        n_valid = max(n_valid, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_valid = min(n_valid, max(n - 1, 0))
    n_test = min(n_test, max(n - 1 - n_valid, 0))
    return n - n_valid - n_test, n_valid, n_test


def _take(rng_order: np.ndarray, strata: np.ndarray, count: int) -> np.ndarray:
    """Pick ``count`` positions spread proportionally over the strata (largest remainder)."""
    if count == 0:
        return np.array([], dtype=np.int64)
    values, sizes = np.unique(strata, return_counts=True)
    quota = sizes * count / sizes.sum()
    whole = np.floor(quota).astype(int)
    extra = count - whole.sum()
    whole[np.argsort(-(quota - whole), kind="stable")[:extra]] += 1
    picked = []
    for value, k in zip(values, whole, strict=True):
        members = rng_order[strata[rng_order] == value]
        picked.append(members[:k])
    return np.concatenate(picked)


def stratified_assign(strata, fractions, seed: int) -> np.ndarray:
    """Split names for each unit, drawn with ``seed`` and stratified by ``strata``."""
    strata = np.asarray(strata)
    n = len(strata)
    _, n_valid, n_test = _split_counts(n, fractions)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    out = np.full(n, "train", dtype=object)
    test = _take(order, strata, n_test)
    out[test] = "test"
    remaining = order[~np.isin(order, test)]
    valid = _take(remaining, strata, n_valid)
    out[valid] = "valid"
    return out


def patient_strata(positive_fraction: pd.Series, n_bins: int = 5) -> np.ndarray:
    """Bin patients by positive fraction (quantile bins; fewer bins for few patients)."""
    n_bins = max(1, min(n_bins, len(positive_fraction) // 3))
    ranks = positive_fraction.rank(method="first")
    return pd.qcut(ranks, n_bins, labels=False).to_numpy() if n_bins > 1 else np.zeros(len(ranks))


def _manifest_id(fmt: str, root: Path, seed: int, fractions, units) -> str:
    digest = hashlib.sha1()
    digest.update(json.dumps([fmt, str(root), seed, list(fractions)]).encode())
    for unit in sorted(units):
        digest.update(unit.encode("utf-8", "surrogatepass") + b"\0")
    return f"{fmt}-seed{seed}-{digest.hexdigest()[:12]}"


def _read_manifest(path: Path) -> dict[str, str] | None:
    """The saved assignments, or None when absent or damaged (then the seeded draw is redone)."""
    try:
        assignments = json.loads(path.read_text())["assignments"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    valid = isinstance(assignments, dict) and set(assignments.values()) <= set(SPLIT_NAMES)
    return assignments if valid else None


def manifest_split(
    fmt: str, root: Path, units: pd.Series, strata, seed: int, fractions, unit: str
) -> tuple[dict[str, str], str, Path]:
    """Assignments unit -> split from the saved manifest, drawing and saving it if absent."""
    fractions = _check_fractions(fractions)
    unique_units = [str(u) for u in units]
    manifest_id = _manifest_id(fmt, Path(root).resolve(), seed, fractions, unique_units)
    path = config.cache_dir() / "splits" / f"{manifest_id}.json"
    saved = _read_manifest(path)
    if saved is not None and set(saved) == set(unique_units):
        return saved, manifest_id, path
    names = stratified_assign(strata, fractions, seed)
    assignments = dict(zip(unique_units, (str(s) for s in names), strict=True))
    payload = {
        "manifest_id": manifest_id,
        "format": fmt,
        "root": str(Path(root).resolve()),
        "seed": seed,
        "fractions": list(fractions),
        "unit": unit,
        "assignments": assignments,
    }
    try:
        write_json_atomic(path, payload)
    except OSError:  # read-only cache: the draw is seeded, so it is the same next time
        pass
    return assignments, manifest_id, path


def sample_indices(indices: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """A seeded random sample of ``n`` of ``indices``, sorted (all of them when ``n`` is None or
    not smaller): the same patches for every model, strength, page and run."""
    indices = np.asarray(indices)
    if n is None or n >= len(indices):
        return np.sort(indices)
    return np.sort(np.random.default_rng(seed).choice(indices, size=n, replace=False))
