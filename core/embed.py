"""Embedding maps: one point per patch, placed by what a model "sees".

Features are the input of each model's classifier head (``ModelSpec.head_layer``, the layer
before the classifier), taken in the same forward pass as P(tumour). They are cached beside the
prediction cache, under the same key (``core.evaluate.cache_key``), and so is each 2-D map::

    <cache>/features/<sha12>-<key16>.npy                    float32 N×D, rows as the predictions
    <cache>/maps/<sha12>-<key16>-<method>-s<seed>-c<cap>.parquet     row, x, y

A feature pass also writes the prediction cache, so Compare and Explain reuse it (and a split
already evaluated still needs one pass for its features).

Reduction to 2-D: UMAP (umap-learn, seeded: the field's standard; numba compiles it on first use,
so it is imported only here, lazily) or PCA (scikit-learn, a fast preview). Features wider than
``UMAP_PCA_DIMS`` go through PCA first, the usual UMAP practice (faster, less noise), and up
to ``EXACT_NEIGHBOURS_MAX`` rows UMAP gets exact neighbours (scikit-learn) instead of compiling
and running its approximate search. Above ``MAP_CAP`` patches a seeded random sample is mapped
and ``EmbeddingMap.note`` says so.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core import config
from core.errors import InputError
from core.evaluate import (
    Progress,
    prediction_cache_path,
    split_fingerprint,
    split_indices,
    store_cached,
)
from core.files import write_atomic

METHODS = ("umap", "pca")
MAP_CAP = 50_000  # points per map; a 2-core machine maps 32,768 (PCam's test split) in minutes
UMAP_PCA_DIMS = 50
UMAP_NEIGHBOURS = 15
EXACT_NEIGHBOURS_MAX = 50_000  # rows whose UMAP neighbours are found exactly (exact_neighbours)
COLOUR_BY = ("label", "prediction", "outcome", "P(tumour)", "patient", "disagreement")
AXES_NOTE = (
    "UMAP axes have no units and distances are not calibrated: nearby points look alike to the "
    "model, but the size of a cluster and the gap between clusters mean little; a PCA map keeps "
    "linear distances but shows only two directions of the features."
)


@dataclass(frozen=True)
class EmbeddingMap:
    """A 2-D map of one checkpoint on one split: the prediction frame's rows (``index, id, label,
    prob`` + ``patient``...) that were mapped, with ``x, y``; ``note`` says when it is a sample."""

    frame: pd.DataFrame
    n_total: int
    method: str
    note: str | None
    computed_with: dict = field(default_factory=dict)  # device, precision of prob and features


def cache_paths(
    checkpoint_path,
    ds,
    split: str,
    device=None,
    fingerprint: str | None = None,
    precision: str = "auto",
) -> tuple[Path, Path]:
    """(prediction cache, feature cache) of a checkpoint on a split: one key, two folders
    (``fingerprint``: ``core.evaluate.split_fingerprint``, taken here when not given)."""
    from core.evaluate import how_it_runs

    how = how_it_runs(device, precision)
    predictions = prediction_cache_path(
        checkpoint_path, ds, split, False, **how, fingerprint=fingerprint
    )
    return predictions, config.cache_dir() / "features" / f"{predictions.stem}.npy"


def split_features(
    checkpoint_path,
    ds,
    split: str = "test",
    progress: Progress | None = None,
    batch_size: int | None = None,
    device=None,
    fingerprint: str | None = None,
    precision: str = "auto",
) -> tuple[pd.DataFrame, np.ndarray]:
    """(predictions, features N×D) of every patch of ``split``, from the caches when present;
    computed on ``device`` in ``precision`` (as ``core.evaluate.predict_split``)."""
    predictions, path = cache_paths(checkpoint_path, ds, split, device, fingerprint, precision)
    if path.exists() and predictions.exists():
        frame = pd.read_parquet(predictions)
        if progress is not None:
            progress(len(frame), len(frame))
        return frame, np.load(path)
    from core.checkpoints import load_checkpoint
    from core.device import resolve_device
    from core.evaluate import prediction_frame

    loaded = load_checkpoint(checkpoint_path, device=resolve_device(str(device or "auto")))
    indices = split_indices(ds, split)
    probs, features = forward_with_features(loaded, ds, indices, progress, batch_size, precision)
    frame = prediction_frame(ds, indices, probs)
    store_cached(frame, predictions)
    try:
        write_atomic(path, lambda fh: np.save(fh, np.ascontiguousarray(features, np.float32)))
    except OSError:  # an unwritable cache (store_cached said so): computed again next time
        pass
    return frame, features


def forward_with_features(loaded, ds, indices, progress=None, batch_size=None, precision="auto"):
    """(P(tumour), features) of ``indices``: the evaluation loop with the head's input recorded."""
    from core.evaluate import predict_loaded
    from core.models import get_spec, get_target_layer

    head = get_target_layer(loaded.model, get_spec(loaded.card.arch).classifier)
    batches: list[np.ndarray] = []
    hook = head.register_forward_pre_hook(
        lambda _module, inputs: batches.append(inputs[0].flatten(1).float().cpu().numpy())
    )
    try:
        probs = predict_loaded(
            loaded, ds, indices, progress=progress, batch_size=batch_size, precision=precision
        )
    finally:
        hook.remove()
    width = head.in_features
    features = np.concatenate(batches) if batches else np.zeros((0, width), np.float32)
    return probs, features


def reduce_2d(features: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """float32 N×2 coordinates of the rows of ``features`` (UMAP or PCA, seeded)."""
    from sklearn.decomposition import PCA

    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    n, width = features.shape
    if n < 3:
        raise InputError(f"a map needs at least 3 patches, got {n}")
    if method == "pca":
        return PCA(2, random_state=seed).fit_transform(features).astype(np.float32)
    if width > UMAP_PCA_DIMS and n > UMAP_PCA_DIMS:
        features = PCA(UMAP_PCA_DIMS, random_state=seed).fit_transform(features)
    import umap  # lazy: numba compiles on import (seconds); the app must not pay it at start-up

    neighbours = min(UMAP_NEIGHBOURS, n - 1)
    # PCA initialisation: 3.5x less CPU than the spectral default on 32,768 patches (15 vs 52 s
    # measured here), whose graph is rarely connected enough for a spectral layout anyway
    reducer = umap.UMAP(
        n_neighbors=neighbours,
        init="pca",
        random_state=seed,
        n_jobs=1,
        precomputed_knn=exact_neighbours(features, neighbours),
    )
    with warnings.catch_warnings():  # no search index: transform() is never used here
        warnings.filterwarnings("ignore", "precomputed_knn", UserWarning)
        return reducer.fit_transform(features).astype(np.float32)


def warm_umap() -> threading.Thread:
    """Compile UMAP's numba functions in a daemon thread, once per process, by mapping 64 random
    rows the way ``reduce_2d`` does. The first UMAP fit of a process spends 10-25 s compiling
    on 2 CPU cores; a page that may show UMAP starts this when it opens, so the user's first
    UMAP map finds the work done (or waits only for what is left: numba compiles once).
    Returns the thread (the same one on every call)."""
    global _WARMING
    with _WARMING_LOCK:
        if _WARMING is None:
            rows = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
            _WARMING = threading.Thread(
                target=reduce_2d, args=(rows, "umap"), daemon=True, name="histolens-umap-warm"
            )
            _WARMING.start()
        return _WARMING


# One warm-up per process: compiled code is shared by every session, so this is not per-user state.
_WARMING: threading.Thread | None = None
_WARMING_LOCK = threading.Lock()


def exact_neighbours(features: np.ndarray, k: int) -> tuple:
    """UMAP's ``precomputed_knn``: the exact ``k`` nearest rows of each row (itself included, as
    UMAP counts it), up to ``EXACT_NEIGHBOURS_MAX`` rows; above, UMAP's own NN-descent.

    Brute force through BLAS in 128 MB blocks: on 32,768 patches (50 dims) neighbours + UMAP take
    26 s of CPU in a fresh process against 66 s with NN-descent, most of which is numba compiling
    NN-descent on its first call (only a second fit in the same process is cheaper); exact
    neighbours are never worse than approximate ones (bench/embed.py)."""
    if len(features) > EXACT_NEIGHBOURS_MAX:
        return (None, None, None)
    from sklearn import config_context
    from sklearn.neighbors import NearestNeighbors

    with config_context(working_memory=128):
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(features)
        distances, indices = nn.kneighbors(features)
    return indices, distances.astype(np.float32), None


def sample_rows(n: int, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted row positions to map: all ``n`` rows, or a seeded random ``cap`` of them."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def embedding_map(
    checkpoint_path,
    ds,
    split: str = "test",
    method: str = "umap",
    seed: int = 0,
    cap: int = MAP_CAP,
    progress: Progress | None = None,
    **predict_kwargs,
) -> EmbeddingMap:
    """The 2-D map of ``checkpoint_path`` on ``split``, computed once and then read from disk
    (a cached map needs neither the model nor the features). ``predict_kwargs``: those of
    ``split_features`` (``fingerprint`` given once for several maps of one split)."""
    from core.evaluate import how_it_runs

    if predict_kwargs.get("fingerprint") is None:
        predict_kwargs["fingerprint"] = split_fingerprint(ds, split)
    device, precision = predict_kwargs.get("device"), predict_kwargs.get("precision", "auto")
    fingerprint = predict_kwargs["fingerprint"]
    predictions, _ = cache_paths(checkpoint_path, ds, split, device, fingerprint, precision)
    path = config.cache_dir() / "maps" / f"{predictions.stem}-{method}-s{seed}-c{cap}.parquet"
    if path.exists() and predictions.exists():
        frame, xy = pd.read_parquet(predictions), pd.read_parquet(path)
    else:
        frame, features = split_features(checkpoint_path, ds, split, progress, **predict_kwargs)
        rows = sample_rows(len(frame), cap, seed)
        coords = reduce_2d(features[rows], method, seed)
        xy = pd.DataFrame({"row": rows, "x": coords[:, 0], "y": coords[:, 1]})
        store_cached(xy, path)
    mapped = frame.iloc[xy["row"].to_numpy()].reset_index(drop=True)
    mapped["x"], mapped["y"] = xy["x"].to_numpy(), xy["y"].to_numpy()
    note = None
    if len(xy) < len(frame):
        note = (
            f"Showing a seeded random sample of {len(xy):,} of {len(frame):,} patches "
            f"(maps are capped at {cap:,} points)."
        )
    return EmbeddingMap(mapped, len(frame), method, note, how_it_runs(device, precision))


def export_frame(emap: EmbeddingMap) -> pd.DataFrame:
    """The ``python -m core embed`` table: ``id, label, prob, x, y`` (+ ``patient`` if known);
    ``attrs["computed_with"]`` (device, precision) travels in the parquet file's metadata."""
    columns = ["id", "label", "prob", "x", "y"]
    if "patient" in emap.frame and emap.frame["patient"].notna().any():
        columns.append("patient")
    table = emap.frame[columns].copy()
    table.attrs = {"computed_with": dict(emap.computed_with)}
    return table


@dataclass(frozen=True)
class Colouring:
    """What a map's points are coloured by: one value per point, and how to read them."""

    values: np.ndarray  # str categories, or float for a continuous scale
    continuous: bool
    title: str


def colour_options(n_models: int, has_patients: bool) -> tuple[str, ...]:
    """The colourings that make sense for 1 or 2 maps of a dataset with or without patients."""
    return tuple(
        by
        for by in COLOUR_BY
        if (by != "patient" or has_patients) and (by != "disagreement" or n_models == 2)
    )


def colourings(maps: dict[str, EmbeddingMap], by: str, thresholds: dict[str, float]):
    """{model name: Colouring} for maps of the same patches (``embedding_map`` with the same
    split, seed and cap); ``thresholds`` are each model's operating points (``card.threshold``)."""
    frames = {name: emap.frame for name, emap in maps.items()}
    first = next(iter(frames.values()))
    if any(not frame["id"].equals(first["id"]) for frame in frames.values()):
        raise ValueError("the maps do not show the same patches; use the same split, seed and cap")
    if by not in COLOUR_BY:
        raise ValueError(f"unknown colouring {by!r}; use one of {', '.join(COLOUR_BY)}")
    calls = {name: frame["prob"].to_numpy() >= thresholds[name] for name, frame in frames.items()}
    if by == "disagreement":
        shared = _disagreement(calls)
        return {name: Colouring(shared, False, "calls") for name in frames}
    return {name: _colouring(frame, by, calls[name]) for name, frame in frames.items()}


def _colouring(frame: pd.DataFrame, by: str, called: np.ndarray) -> Colouring:
    labels = frame["label"].to_numpy()
    if by == "P(tumour)":
        return Colouring(frame["prob"].to_numpy(), True, "P(tumour)")
    if by == "label":
        values = np.where(labels < 0, "unlabelled", np.where(labels == 1, "tumour", "normal"))
    elif by == "prediction":
        values = np.where(called, "tumour", "normal")
    elif by == "outcome":
        values = np.where(
            labels < 0,
            "unlabelled",
            np.where(called, np.where(labels == 1, "TP", "FP"), np.where(labels == 1, "FN", "TN")),
        )
    else:  # patient
        values = frame["patient"].fillna("unknown").astype(str).to_numpy()
    return Colouring(values.astype(str), False, by)


def _disagreement(calls: dict[str, np.ndarray]) -> np.ndarray:
    (name_a, a), (name_b, b) = calls.items()
    return np.select(
        [a & b, ~a & ~b, a & ~b],
        ["both: tumour", "both: normal", f"only {name_a}: tumour"],
        f"only {name_b}: tumour",
    )


def rows_from_selection(points) -> list[int]:
    """Rows of the map frame picked by a plotly box/lasso selection: each point's ``customdata``
    is its row (``core.figures.embedding_figure``)."""
    rows = set()
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list | tuple):
            data = data[0] if data else None
        if data is not None:
            rows.add(int(data))
    return sorted(rows)


def selection_table(maps: dict[str, EmbeddingMap], rows, thresholds) -> pd.DataFrame:
    """The selected patches for a CSV: ``index, id, label`` (+ ``patient``), then each model's
    P(tumour) and call, with the threshold of that call and the device and precision that
    computed the probabilities (a CSV has no header block: they travel as columns)."""
    first = next(iter(maps.values())).frame.iloc[rows]
    keep = [c for c in ("index", "id", "label", "patient") if c in first]
    table = first[keep].reset_index(drop=True)
    for name, emap in maps.items():
        prob = emap.frame["prob"].to_numpy()[rows]
        table[f"prob {name}"] = prob
        table[f"call {name}"] = np.where(prob >= thresholds[name], "tumour", "normal")
        table[f"threshold {name}"] = thresholds[name]
        for key in ("device", "precision"):
            table[f"{key} {name}"] = emap.computed_with.get(key, "unknown")
    return table
