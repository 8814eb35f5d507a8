"""Pictures of a dataset, computed here so pages only render: colour statistics from a seeded
sample, and a patient/slide mosaic rebuilt from patch coordinates with label or probability
overlays (the Compare page passes predicted probabilities to the same function)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.data.base import PatchDataset
from core.data.splits import sample_indices

NEAR_WHITE = 220  # all channels at or above: glass/background
WHITE_PATCH_SHARE = 0.5  # a patch is "background" when at least half its pixels are near white
TUMOUR_RGB = np.array([230.0, 30.0, 30.0])
NORMAL_RGB = np.array([30.0, 160.0, 60.0])
LOW_PROB_RGB = np.array([40.0, 90.0, 230.0])
Progress = Callable[[float], None] | None


@dataclass(frozen=True)
class ColourStats:
    n: int  # patches sampled
    histogram: np.ndarray  # 3×256 pixel fractions per channel (R, G, B)
    mean: np.ndarray  # per-channel mean, 0..255
    std: np.ndarray  # per-channel std
    white_fraction: float  # share of sampled patches that are mostly background


def colour_stats(
    ds: PatchDataset, n: int = 256, seed: int = 0, indices=None, progress: Progress = None
) -> ColourStats:
    """Per-channel histograms, mean/std and background share over a seeded sample."""
    chosen = sample_indices(np.arange(len(ds)) if indices is None else indices, n, seed)
    counts = np.zeros((3, 256), np.int64)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    white = 0
    for k, i in enumerate(chosen):
        patch = ds.read(int(i)).reshape(-1, 3)  # native size: no padding in the statistics
        for c in range(3):
            counts[c] += np.bincount(patch[:, c], minlength=256)
        values = patch.astype(np.float64)
        total += values.sum(0)
        total_sq += (values**2).sum(0)
        pixels += len(patch)
        white += (patch.min(1) >= NEAR_WHITE).mean() >= WHITE_PATCH_SHARE
        if progress and (k % 16 == 0 or k == len(chosen) - 1):
            progress((k + 1) / len(chosen))
    pixels = max(pixels, 1)
    mean = total / pixels
    return ColourStats(
        n=len(chosen),
        histogram=counts / pixels,
        mean=mean,
        std=np.sqrt(np.maximum(total_sq / pixels - mean**2, 0)),
        white_fraction=white / max(len(chosen), 1),
    )


@dataclass(frozen=True)
class GalleryPage:
    indices: np.ndarray  # positions in the dataset, in display order
    images: np.ndarray  # uint8 N×h×w×3 (padded to image_size)
    n_matching: int  # patches matching the filters
    n_pages: int


def page_count(n: int, per_page: int) -> int:
    """Pages needed for ``n`` items (at least one, so an empty result still shows a page)."""
    return max(1, -(-n // per_page))


def page_of(indices: np.ndarray, page: int, per_page: int) -> np.ndarray:
    """The ``page``-th slice of ``indices`` (pages start at 0; out-of-range pages are clamped)."""
    page = min(max(page, 0), page_count(len(indices), per_page) - 1)
    return indices[page * per_page : (page + 1) * per_page]


def gallery_page(
    ds: PatchDataset, split=None, label=None, patient=None, page: int = 0, per_page: int = 64
) -> GalleryPage:
    """One page of the patches matching the filters (page numbers start at 0, clamped)."""
    matching = ds.indices(split=split, label=label, patient=patient)
    chosen = page_of(matching, page, per_page)
    return GalleryPage(
        chosen, ds.read_batch(chosen), len(matching), page_count(len(matching), per_page)
    )


def why_empty(ds: PatchDataset, split=None, label=None, patient=None) -> str | None:
    """When the filters leave nothing, one line saying why (IDC splits are by patient, so a
    patient lives in one split only); None when something matches."""
    if len(ds.indices(split=split, label=label, patient=patient)):
        return None
    if (
        patient is not None
        and split is not None
        and not len(ds.indices(split=split, patient=patient))
    ):
        where = sorted(ds.meta.loc[ds.indices(patient=patient), "split"].unique())
        return (
            f"Patient {patient} has no patches in split {split!r}: splits are drawn by patient, "
            f"and theirs are in {', '.join(map(repr, where))}."
        )
    filters = {"split": split, "label": label, "patient": patient}
    given = ", ".join(f"{k} {v!r}" for k, v in filters.items() if v is not None)
    return f"No patch matches {given}." if given else "This dataset has no patches."


@dataclass(frozen=True)
class Mosaic:
    image: np.ndarray  # uint8 H×W×3, the slide rebuilt from its patches (white where none)
    labels: np.ndarray  # int8 H×W: -1 no patch, else the patch label
    probs: np.ndarray | None  # float32 H×W: NaN where no patch/probability
    scale: float  # mosaic pixels per slide pixel
    n_patches: int


def mosaic_groups(ds: PatchDataset) -> list[str]:
    """Patients (IDC) or slides (PCam with meta csv) that have coordinates."""
    placed = ds.meta.dropna(subset=["patient", "x", "y"])
    return sorted(placed["patient"].astype(str).unique())


def _patch_sizes(ds: PatchDataset, rows) -> tuple[np.ndarray, np.ndarray]:
    """Native patch heights/widths (IDC edge patches are smaller), else the set's size."""
    if {"height", "width"} <= set(ds.meta.columns):
        return (
            ds.meta.loc[rows, "height"].to_numpy(np.int64),
            ds.meta.loc[rows, "width"].to_numpy(np.int64),
        )
    h, w = ds.image_size
    return np.full(len(rows), h), np.full(len(rows), w)


def slide_mosaic(
    ds: PatchDataset,
    patient: str,
    probs: Mapping[str, float] | None = None,
    max_side: int = 1600,
    progress: Progress = None,
) -> Mosaic:
    """Rebuild one patient's slide from patch x/y; ``probs`` maps patch id -> P(tumour)."""
    rows = ds.meta.index[(ds.meta["patient"] == patient) & ds.meta["x"].notna()]
    if len(rows) == 0:
        raise ValueError(f"no patches with coordinates for {patient!r}")
    xs = ds.meta.loc[rows, "x"].to_numpy(dtype=np.int64)
    ys = ds.meta.loc[rows, "y"].to_numpy(dtype=np.int64)
    hs, ws = _patch_sizes(ds, rows)
    x0, y0 = xs.min(), ys.min()
    span_h, span_w = (ys + hs).max() - y0, (xs + ws).max() - x0
    scale = min(1.0, max_side / max(span_h, span_w))
    out_h, out_w = int(np.ceil(span_h * scale)), int(np.ceil(span_w * scale))
    image = np.full((out_h, out_w, 3), 255, np.uint8)
    labels = np.full((out_h, out_w), -1, np.int8)
    prob_map = np.full((out_h, out_w), np.nan, np.float32) if probs is not None else None
    for k, i in enumerate(rows):
        patch = ds.read(int(i))
        ph, pw = max(1, round(patch.shape[0] * scale)), max(1, round(patch.shape[1] * scale))
        tile = np.asarray(Image.fromarray(patch).resize((pw, ph), Image.Resampling.BILINEAR))
        top, left = int((ys[k] - y0) * scale), int((xs[k] - x0) * scale)
        box = (slice(top, top + ph), slice(left, left + pw))
        tile = tile[: out_h - top, : out_w - left]
        image[box] = tile
        labels[box] = ds.meta.at[i, "label"]
        if prob_map is not None:
            prob_map[box] = probs.get(str(ds.meta.at[i, "id"]), np.nan)
        if progress and (k % 64 == 0 or k == len(rows) - 1):
            progress((k + 1) / len(rows))
    return Mosaic(image, labels, prob_map, scale, len(rows))


def overlay_labels(mosaic: Mosaic, alpha: float = 0.35) -> np.ndarray:
    """Tumour patches tinted red, normal ones green."""
    out = mosaic.image.astype(np.float32)
    for value, colour in ((1, TUMOUR_RGB), (0, NORMAL_RGB)):
        where = mosaic.labels == value
        out[where] = (1 - alpha) * out[where] + alpha * colour
    return out.astype(np.uint8)


def overlay_probs(mosaic: Mosaic, alpha: float = 0.45) -> np.ndarray:
    """Patches tinted blue (P(tumour)=0) to red (1); patches without a probability untouched."""
    if mosaic.probs is None:
        raise ValueError("this mosaic was built without probabilities")
    out = mosaic.image.astype(np.float32)
    where = ~np.isnan(mosaic.probs)
    p = mosaic.probs[where][:, None]
    colour = (1 - p) * LOW_PROB_RGB + p * TUMOUR_RGB
    out[where] = (1 - alpha) * out[where] + alpha * colour
    return out.astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The patch with its ground-truth tumour mask tinted red (demo sets)."""
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * TUMOUR_RGB
    return out.astype(np.uint8)
