"""Counts that never touch pixels: the ``python -m core data summary --json`` object."""

from __future__ import annotations

from core.data.base import PatchDataset
from core.data.splits import ALL_SPLITS


def _label_counts(labels) -> dict[str, int]:
    return {"0": int((labels == 0).sum()), "1": int((labels == 1).sum())}


def summarize(ds: PatchDataset, details: bool = False) -> dict:
    """``{"format", "n", "labels", "splits", "patients", "image_size", "excluded"}``; ``n`` and
    the counts leave out the ``excluded`` patches (unreadable when checked: core.data.exclusions).

    With ``details=True`` also ``synthetic``, ``edge_patches`` (patches smaller than
    ``image_size``), ``problems`` (indexing findings), ``notes`` (split caveats), ``manifest_id``,
    ``exclusions`` (the exclusion list's path, or None).
    """
    meta = ds.meta
    present = [s for s in ALL_SPLITS if (meta["split"] == s).any()]
    patients = meta["patient"].dropna()
    summary = {
        "format": ds.format,
        "n": len(ds),
        "labels": _label_counts(meta["label"]),
        "splits": {
            s: {
                "n": int((meta["split"] == s).sum()),
                "labels": _label_counts(meta.loc[meta["split"] == s, "label"]),
            }
            for s in present
        },
        "patients": int(patients.nunique()) if len(patients) else None,
        "image_size": list(ds.image_size),
        "excluded": len(ds.excluded),
    }
    if details:
        summary.update(
            synthetic=ds.synthetic,
            edge_patches=getattr(ds, "edge_patches", 0),
            problems=list(ds.problems),
            notes=list(ds.notes),
            manifest_id=ds.manifest_id,
            exclusions=None if ds.exclusions_path is None else str(ds.exclusions_path),
        )
    return summary
