"""Patches a dataset check found unreadable, kept out of every reader until their files change.

``python -m core data check PATH --exclude`` (or the Datasets page's check) writes the list;
``open_dataset`` applies it, so training, evaluation, Explain, Compare and Embeddings never meet
those patches: they are gone from ``ds.meta`` and ``ds.indices`` (``ds.excluded`` names them).

On disk, beside the split manifests and the IDC index::

    config.cache_dir()/exclusions/<key>.json      key: a hash of the dataset's resolved root
    {"kind": "histolens-exclusions", "version": 1, "format": "idc", "root": "/abs/root",
     "written": "<UTC time>", "patches": [{"id": ..., "fingerprint": ..., "reason": ...}, ...]}

A listed patch stays out while ``ds.data_fingerprint([i])`` (inode, size, mtime and ctime of the
files behind it, as the prediction cache sees them) is what the check recorded: replacing the
file brings the patch back, to be read, and checked, again. A list that cannot be read or was
written for another dataset is ignored with one line in ``ds.problems``: it never stops a
dataset from opening.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from core import config
from core.data.base import DatasetError
from core.errors import one_line, printable
from core.files import write_json_atomic

KIND, VERSION = "histolens-exclusions", 1
MAX_LIST_BYTES = 64 * 1024 * 1024  # ~300k entries; a larger file is not ours


class Listed(Protocol):
    """What the list keeps of each patch (core.data.check.Unreadable is one)."""

    id: str
    fingerprint: str
    reason: str


def list_path(root) -> Path:
    """Where the exclusion list of the dataset at ``root`` lives (whether or not it exists)."""
    key = hashlib.sha1(os.fsencode(Path(root).resolve())).hexdigest()[:16]
    return config.cache_dir() / "exclusions" / f"{key}.json"


def revision(root) -> str:
    """A token that changes whenever the list of ``root`` is written or removed ("" when there
    is none): page caches key on it, so an exclusion shows at once."""
    try:
        info = os.stat(list_path(root))
    except OSError:
        return ""
    return f"{info.st_mtime_ns}-{info.st_size}"


def apply_exclusions(ds) -> None:
    """Leave out the listed patches of ``ds`` whose files are unchanged since the check; a
    damaged or foreign list, and listed patches whose files changed, are one line each in
    ``ds.problems``."""
    path = list_path(ds.root)
    ids, problem = in_force(ds, path)
    if problem:
        ds.problems.append(problem)
    if len(ids) == len(ds):
        raise DatasetError(
            f"{ds.root}: every patch is on the exclusion list {path} (unreadable when checked); "
            "replace the files, or delete the list to read them again."
        )
    if ids:
        ds.exclude(ids)
        ds.exclusions_path = path


def in_force(ds, path: Path | None = None) -> tuple[list[str], str | None]:
    """(ids of ``ds`` the list keeps out now, one line about what was not taken or None)."""
    path = path or list_path(ds.root)
    listed, problem = _read(path, ds)
    if not listed:
        return [], problem
    rows = {patch_id: i for i, patch_id in enumerate(ds.meta["id"])}
    kept, changed = [], []
    for entry in listed:
        i = rows.get(entry["id"])
        if i is None:
            continue  # the file is gone: the reader no longer lists it
        same = ds.data_fingerprint([i]) == entry["fingerprint"]
        (kept if same else changed).append(entry["id"])
    if changed:
        problem = printable(
            f"{path}: {len(changed)} excluded patch(es) changed since the check (e.g. "
            f"{', '.join(changed[:3])}): read again; check the dataset again"
        )
    return kept, problem


def _read(path: Path, ds) -> tuple[list[dict], str | None]:
    """The list's entries, or ([], why it is ignored); ([], None) when there is no list."""

    def ignored(why: str) -> tuple[list[dict], str]:
        return [], one_line(
            f"{path}: exclusion list ignored ({why}); run `python -m core data check "
            f"{ds.root} --exclude` to write it again"
        )

    try:
        if os.stat(path).st_size > MAX_LIST_BYTES:
            return ignored("too large to be one")
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], None
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        return ignored(f"unreadable: {type(err).__name__}")
    if not isinstance(found, dict) or found.get("kind") != KIND or found.get("version") != VERSION:
        return ignored("not a HistoLens exclusion list")
    if found.get("root") != str(Path(ds.root).resolve()) or found.get("format") != ds.format:
        return ignored(f"written for {found.get('format')} data at {found.get('root')}")
    patches = found.get("patches")
    if not isinstance(patches, list) or not all(_well_formed(p) for p in patches):
        return ignored("damaged entries")
    return patches, None


def _well_formed(entry) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(k), str) for k in ("id", "fingerprint", "reason")
    )


def write_exclusions(root, fmt: str, patches: Iterable[Listed]) -> Path | None:
    """Make ``patches`` the list of the dataset at ``root`` (replacing any earlier one); an
    empty ``patches`` removes the list. Returns its path, or None when there is none now."""
    path = list_path(root)
    entries = [{"id": p.id, "fingerprint": p.fingerprint, "reason": p.reason} for p in patches]
    if not entries:
        path.unlink(missing_ok=True)
        return None
    write_json_atomic(
        path,
        {
            "kind": KIND,
            "version": VERSION,
            "format": fmt,
            "root": str(Path(root).resolve()),
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
            "patches": entries,
        },
        indent=1,
    )
    return path
