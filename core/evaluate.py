"""Predictions of one checkpoint on one dataset split, cached on disk.

Cache layout: ``config.cache_dir()/predictions/<sha12>-<key16>.parquet``, one row per patch with
columns ``index`` (position in the dataset), ``id``, ``label`` (-1 if unknown), ``prob``
(P(tumour)) and ``patient``/``x``/``y`` where the dataset knows them. ``key16`` hashes the
checkpoint's sha256, the dataset identity (resolved root, format, split manifest id), the size
and mtime of every data file of the split (``ds.data_fingerprint``), the split, the TTA flag,
the device type and precision, and ``CACHE_VERSION``: a retrained checkpoint, a re-split dataset
or an overwritten image never reuses stale predictions (nor bf16 ones served as fp32), and opening the same comparison again does no model forward at all.
A cache folder that cannot be written (read-only disk, full disk) means "no cache": one notice
per folder on the ``histolens`` logger (stderr for the CLI), and the predictions are returned.
A damaged cache file is recomputed.

Data path: a background thread reads the next sorted batch (``ds.read_batch``) and turns it into
the model's input (``core.preprocess.to_model_input``) while the main thread runs the forward
pass, so the model, not the loader, is the bottleneck.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from core import config
from core.d4 import D4_GROUP
from core.data.splits import SPLIT_NAMES, sample_indices
from core.errors import InputError, is_out_of_memory
from core.files import file_sha256, write_atomic

CACHE_VERSION = 3  # 2: the split's data files in the key; 3: device and precision
INTERVALS_VERSION = 1  # of the cached AUC intervals (cached_auc_ci)
LOG = logging.getLogger("histolens")
_UNWRITABLE: set[str] = set()  # cache folders already reported (one notice each per process)
SPLITS = (*reversed(SPLIT_NAMES), "all")  # evaluation choices, test (the default) first
PREFETCH_BATCHES = 2
# On the CPU, batches past 16 patches are no faster, and 128 96-px patches through a 32-channel
# conv hold ~150 MB per activation. Measured (hcd_cnn, 256 demo patches, 2 busy cores): batch 32
# raised the process peak by 103-135 MB in 4.8-5.8 s, batch 16 by 54-65 MB in 4.4-4.6 s.
CPU_BATCH_SIZE = 16
# What evaluate_checkpoint reports, in display order (CLI tables and the Compare page).
REPORTED_METRICS = (
    "auc",
    "ap",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "brier",
    "ece",
)

Progress = Callable[[int, int], None]  # progress(done, total), in patches


def predict_split(
    checkpoint_path,
    ds,
    split: str = "test",
    tta: bool = False,
    progress: Progress | None = None,
    batch_size: int | None = None,
    device=None,
    precision: str = "auto",
    fingerprint: str | None = None,
    loader=None,
    shift=None,
    n: int | None = None,
) -> pd.DataFrame:
    """P(tumour) for every patch of ``split`` ("all" = every patch), from the cache if present.

    ``tta`` averages the softmax over the 8 dihedral transforms (``core.d4``). ``frame.attrs``
    holds the ``device`` type and ``precision`` that computed the probabilities; both are part
    of the cache key, so bf16 predictions are never served as fp32 ones (or CPU as CUDA).
    ``fingerprint``: the split's ``split_fingerprint``, when the caller already took it (one
    stat per data file: a caller running several checkpoints on one split takes it once).
    ``loader``: the model's source when not the file itself (``predict_indices``).
    ``shift`` (``core.robustness.StainShift``): predict on stain-shifted patches; the frame gets
    an ``untreated`` column (patches the shift passed through). ``n``: a seeded sample of ``n``
    patches of the split (``sample_indices``). Both are part of the cache key.
    """
    how = how_it_runs(device, precision)
    every = split_indices(ds, split)
    indices = sample_indices(every, n)
    variant = {
        "shift": None if shift is None else shift.key,
        "n": None if len(indices) == len(every) else len(indices),
    }
    cache = prediction_cache_path(
        checkpoint_path, ds, split, tta, **how, fingerprint=fingerprint, variant=variant
    )
    frame = _read_cached(cache)
    if frame is not None:
        if progress is not None:
            progress(len(frame), len(frame))
    else:
        reader = ds if shift is None else shift.reader(ds)
        probs = predict_indices(
            checkpoint_path,
            reader,
            indices,
            tta,
            progress,
            batch_size,
            device,
            precision=precision,
            loader=loader,
        )
        frame = prediction_frame(ds, indices, probs)
        if shift is not None:
            frame["untreated"] = reader.untreated(indices)
        store_cached(frame, cache)
    frame.attrs.update(how)
    return frame


def how_it_runs(device=None, precision: str = "auto") -> dict[str, str]:
    """{"device": cuda | mps | cpu, "precision": fp32 | bf16 | fp16} that a prediction with
    these requests computes in (None and "auto" resolved as core.device resolves them).
    On a machine without GPUs (``_no_gpu``) both "auto" and "cpu" are the CPU, known without
    importing torch, which took most of a cached comparison's seconds."""
    from core.train_config import precision_without_cuda

    requested = str(device or "auto")
    if requested in ("auto", "cpu") and _no_gpu():
        return {"device": "cpu", "precision": precision_without_cuda(precision)}
    from core.device import resolve_device, resolve_precision

    resolved = resolve_device(requested)
    return {"device": resolved.type, "precision": resolve_precision(precision, resolved)}


# Device files that every GPU torch can use needs on Linux: NVIDIA's driver, WSL2's GPU
# paravirtualisation, AMD's ROCm (which torch also calls "cuda").
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def _no_gpu() -> bool:
    """True where torch can see no GPU: Linux without any GPU device file. Elsewhere (macOS
    has MPS) it is not known without torch: False."""
    return sys.platform.startswith("linux") and not any(map(os.path.exists, GPU_DEVICE_FILES))


def _read_cached(cache: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(cache) if cache.is_file() else None
    except Exception:  # damaged or foreign file: recompute (and overwrite it if we can)
        return None


def store_cached(frame: pd.DataFrame, cache: Path) -> None:
    """Write a cache file atomically; an unwritable cache folder is one logged notice, no error."""
    _store(cache, lambda fh: frame.to_parquet(fh, index=False))


def _store(cache: Path, write) -> None:
    try:
        write_atomic(cache, write)
    except OSError as err:
        folder = str(cache.parent)
        if folder not in _UNWRITABLE:
            _UNWRITABLE.add(folder)
            LOG.warning(
                "note: prediction cache %s is not writable (%s); results are not cached",
                folder,
                err.strerror or type(err).__name__,
            )


def cached_auc_ci(y, prob, groups=None, n_boot: int = 1000, seed: int = 0):
    """``core.metrics.bootstrap_auc_ci`` kept beside the predictions it is computed from
    (``predictions/intervals/<key>.json``, the key hashing the labels, P(tumour), patients,
    resamples, seed and the rules the interval depends on): a comparison opened again does no
    bootstrap. Same cache conventions as the predictions (atomic, unwritable = not cached)."""
    from dataclasses import asdict

    from core import metrics

    if n_boot < 1:
        return None
    digest = hashlib.sha256()
    for part in (np.asarray(y, dtype=np.int64), np.asarray(prob, dtype=np.float64)):
        digest.update(np.ascontiguousarray(part).tobytes())
    if groups is not None:
        digest.update("\0".join(map(str, groups)).encode())
    rules = (metrics.MIN_PATIENTS, metrics.MIN_PATIENTS_PER_SIDE, metrics.RESAMPLES_PER_BLOCK)
    digest.update(json.dumps([n_boot, seed, rules, INTERVALS_VERSION]).encode())
    cache = config.cache_dir() / "predictions" / "intervals" / f"{digest.hexdigest()[:24]}.json"
    try:
        stored = json.loads(cache.read_text())
        return None if stored is None else metrics.AucCI(**stored)
    except (OSError, ValueError, TypeError):  # absent or damaged: compute (and store) it
        pass
    ci = metrics.bootstrap_auc_ci(y, prob, n_boot=n_boot, seed=seed, groups=groups)
    text = json.dumps(None if ci is None else asdict(ci))
    _store(cache, lambda fh: fh.write(text.encode()))
    return ci


def open_dataset_for(data_path, checkpoint_paths, opener=None) -> tuple:
    """Open ``data_path`` with the split the checkpoints were trained on; returns (ds, warnings).

    IDC and HCD splits are drawn with a split seed (the card's ``data_split_seed``). Evaluating
    with another would put some of a model's training patients in its "test" split, so the
    dataset is opened with the split seed of the first checkpoint trained on this data (or of the
    same format), and a warning names every checkpoint trained on this same data with a different
    split, on another format, or on synthetic demo data when this data is real.
    ``opener(path: str, seed: int)`` opens it (default ``open_dataset``; pages pass their shared
    dataset cache).
    """
    from core.catalogue import model_names, read_card
    from core.data import detect_format, open_dataset

    root = Path(data_path).resolve()
    fmt = detect_format(root)
    cards = {str(p): read_card(p) for p in checkpoint_paths}
    same_data = [c for c in cards.values() if c.dataset and Path(c.dataset).resolve() == root]
    same_format = [c for c in cards.values() if c.dataset_format == fmt]
    seed = (same_data or same_format)[0].data_split_seed if (same_data or same_format) else 0
    ds = (opener or open_dataset)(str(root), seed)
    names = dict(zip(cards, model_names(list(cards)), strict=True))
    warnings = [
        f"{names[path]} was trained on a different split of this dataset "
        f"({card.split_manifest_id}, split seed {card.data_split_seed}; shown: {ds.manifest_id}): "
        "its evaluation split may contain patches it was trained on."
        for path, card in cards.items()
        if card in same_data and card.split_manifest_id != ds.manifest_id
    ]
    warnings += [
        f"{names[path]} was trained on {card.dataset_format.upper()} patches, not "
        f"{fmt.upper()}: its scores here measure transfer to other data."
        for path, card in cards.items()
        if card.dataset_format and card.dataset_format != fmt
    ]
    warnings += [
        f"{names[path]} was trained on synthetic demo data: on real patches its scores and "
        "heatmaps say nothing about real tissue."
        for path, card in cards.items()
        if card.synthetic_data and not ds.synthetic
    ]
    return ds, warnings


def split_indices(ds, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return np.sort(ds.indices(split=None if split == "all" else split))


def split_fingerprint(ds, split: str) -> str:
    """The state of the data files behind ``split`` (``ds.data_fingerprint``), as cache keys use it."""
    return ds.data_fingerprint(split_indices(ds, split))


def prediction_cache_path(
    checkpoint_path,
    ds,
    split: str,
    tta: bool,
    device: str = "cpu",
    precision: str = "fp32",
    fingerprint: str | None = None,
    variant: dict | None = None,
) -> Path:
    """The cache file of these predictions; ``device``/``precision`` as resolved by
    ``how_it_runs`` (bf16 probabilities differ from fp32 ones by up to ~1e-3); ``fingerprint``
    is ``split_fingerprint(ds, split)``, taken here when not given. ``variant``: what else
    changes them (a stain shift, a sample size); its None values leave the key as it was, so
    plain predictions keep their cache files."""
    sha = file_sha256(checkpoint_path)
    identity = {
        "checkpoint_sha256": sha,
        "dataset_root": str(Path(ds.root).resolve()),
        "format": ds.format,
        "manifest_id": ds.manifest_id,
        "split": split,
        "data_files": fingerprint or split_fingerprint(ds, split),
        "tta": bool(tta),
        "device": device,
        "precision": precision,
        "version": CACHE_VERSION,
        **{k: v for k, v in (variant or {}).items() if v is not None},
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return config.cache_dir() / "predictions" / f"{sha[:12]}-{key}.parquet"


def prediction_frame(ds, indices: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    meta = ds.meta.iloc[indices]
    frame = pd.DataFrame(
        {
            "index": indices.astype(np.int64),
            "id": meta["id"].astype(str).to_numpy(),
            "label": meta["label"].astype(np.int64).to_numpy(),
            "prob": np.asarray(probs, dtype=np.float64),
        }
    )
    for column in ("patient", "x", "y"):
        if column in meta and meta[column].notna().any():
            frame[column] = meta[column].to_numpy()
    return frame


def predict_indices(
    checkpoint_path,
    ds,
    indices,
    tta=False,
    progress=None,
    batch_size=None,
    device=None,
    calibrated: bool = True,
    precision: str = "auto",
    loader=None,
) -> np.ndarray:
    """P(tumour) of the given patches (no cache): the prefetching loader + forward loop.
    Mapped by the checkpoint card's calibration unless ``calibrated=False`` (the raw softmax,
    which a calibration is fitted on). ``batch_size`` None: 128 on CUDA, ``CPU_BATCH_SIZE``
    elsewhere.
    Computed in ``precision`` (core.device: auto = bf16 on CUDA, fp32 elsewhere).
    ``loader(path, device)`` supplies a model shared with others (the app's one model cache, so
    no checkpoint is loaded twice): its forward then runs under ``model_lock``, as CAMs do."""
    from core.checkpoints import load_checkpoint, model_lock
    from core.device import resolve_device

    device = resolve_device(str(device or "auto"))
    args = (ds, indices, tta, progress, batch_size, calibrated, precision)
    if loader is None:
        return predict_loaded(load_checkpoint(checkpoint_path, device=device), *args)
    loaded = loader(checkpoint_path, device)
    with model_lock(loaded.model):
        return predict_loaded(loaded, *args)


def predict_loaded(
    loaded,
    ds,
    indices,
    tta=False,
    progress=None,
    batch_size=None,
    calibrated: bool = True,
    precision: str = "auto",
) -> np.ndarray:
    """``predict_indices`` for a model already loaded (``core.embed`` hooks its head first)."""
    import torch

    from core.checkpoints import check_finite_probabilities
    from core.preprocess import to_model_input

    device = loaded.device
    batch_size = batch_size or (128 if device.type == "cuda" else CPU_BATCH_SIZE)
    # channels_last: same numerics, faster inference on CPU (240 vs 155 img/s for the HCD seed
    # CNN on 2 cores) and on GPU
    model = loaded.model.to(memory_format=torch.channels_last)

    def load(chunk):
        return to_model_input(ds.read_batch(chunk), loaded.card, device, channels_last=True)

    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    probs, done = [], 0
    # closing: a failed batch stops and joins the reading thread before the error travels on
    # (left running, it could hold h5py's lock as the interpreter exits, which then hangs)
    with contextlib.closing(prefetch(map(load, chunks))) as batches:
        try:
            for chunk, x in zip(chunks, batches, strict=True):
                probs.append(forward_probs(model, x, tta, precision))
                done += len(chunk)
                if progress is not None:
                    progress(done, len(indices))
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            side = loaded.card.input_size
            raise InputError(
                f"{loaded.path}: out of memory predicting batches of {batch_size} at "
                f"{side}×{side} px (the card's input size); give a smaller --batch-size."
            ) from None
    probs = check_finite_probabilities(np.concatenate(probs) if probs else np.zeros(0), loaded.path)
    return loaded.card.calibrated(probs) if calibrated else probs


def forward_probs(model, x, tta: bool = False, precision: str = "auto") -> np.ndarray:
    """Softmax P(tumour), averaged over the 8 D4 transforms when ``tta``, in ``precision``
    (``core.device.autocast_for``)."""
    import torch

    from core.device import autocast_for

    with torch.inference_mode(), autocast_for(x.device, precision):
        if not tta:  # not D4_GROUP[0].apply(x): rot90(k=0) would copy the batch for nothing
            return torch.softmax(model(x).float(), dim=1)[:, 1].cpu().numpy()
        total = sum(torch.softmax(model(g.apply(x)).float(), dim=1)[:, 1] for g in D4_GROUP)
    return (total / len(D4_GROUP)).cpu().numpy()


def prefetch(items: Iterable, depth: int = PREFETCH_BATCHES) -> Iterator:
    """Iterate ``items`` produced by a background thread, at most ``depth`` ahead.

    An exception in the producer is re-raised in the consumer; leaving the loop early stops the
    producer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if not _put(buffer, (True, item), stop):
                    return
            _put(buffer, (True, done), stop)
        except BaseException as error:  # handed to the consumer, which raises it
            _put(buffer, (False, error), stop)

    thread = threading.Thread(target=produce, daemon=True, name="histolens-prefetch")
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()  # the producer sees ``stop`` after its current item


def _put(buffer: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            buffer.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def labelled(preds: pd.DataFrame) -> pd.DataFrame:
    """Rows with a known label (the "all" split may include unlabelled patches)."""
    return preds[preds["label"] >= 0]


def patient_table(preds: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per-patient summary for datasets that know patients (IDC): patch count, true and
    predicted tumour fraction, mean P(tumour), patch accuracy, sensitivity, specificity, AUC.

    One row per patient, sorted by patient; empty when no patient is known.
    """
    from core.metrics import binary_metrics

    known = labelled(preds)
    if "patient" not in known or known["patient"].isna().all():
        return pd.DataFrame()
    rows = []
    for patient, group in known.dropna(subset=["patient"]).groupby("patient", sort=True):
        m = binary_metrics(group["label"], group["prob"], threshold)
        rows.append(
            {
                "patient": patient,
                "n": m["n"],
                "tumour_fraction": m["n_tumour"] / m["n"],
                "predicted_fraction": float((group["prob"] >= threshold).mean()),
                "mean_prob": float(group["prob"].mean()),
                "accuracy": m["accuracy"],
                "sensitivity": m["sensitivity"],
                "specificity": m["specificity"],
                "auc": m["auc"],
            }
        )
    return pd.DataFrame(rows)


def patient_summary(preds: pd.DataFrame, threshold: float = 0.5) -> dict | None:
    """Patient-level figures: detection (``core.metrics.patient_level``: a patient is tumour
    when any patch is, scored by its max P(tumour)), how well each patient's tumour burden
    (fraction of tumour patches) is estimated, and the spread of per-patient accuracy.
    None without patients."""
    from core.metrics import patient_level

    table = patient_table(preds, threshold)
    if table.empty:
        return None
    detection = patient_level(labelled(preds).dropna(subset=["patient"]), threshold)
    error = table["predicted_fraction"] - table["tumour_fraction"]
    spread = table["tumour_fraction"].std() > 0 and table["predicted_fraction"].std() > 0
    return {
        **detection,
        "burden_mae": float(error.abs().mean()),
        "burden_correlation": float(table["tumour_fraction"].corr(table["predicted_fraction"]))
        if spread
        else None,
        "accuracy_median": float(table["accuracy"].median()),
        "accuracy_min": float(table["accuracy"].min()),
        "auc_median": float(table["auc"].dropna().median()) if table["auc"].notna().any() else None,
    }


def evaluate_checkpoint(
    checkpoint_path,
    ds,
    split: str = "test",
    tta: bool = False,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    **predict_kwargs,
) -> dict:
    """The `python -m core evaluate --json` object: metrics on the labelled patches of the split,
    the AUC's bootstrap 95% CI and, where patients are known, the patient-level summary.

    ``threshold`` None: the checkpoint card's operating point (``threshold_source`` "card";
    0.5 for checkpoints without one), else the given value ("cli")."""
    from core.calibration import Calibration
    from core.checkpoints import read_card
    from core.conformal import coverage
    from core.metrics import binary_metrics, known_groups

    source = "card" if threshold is None else "cli"
    card = read_card(checkpoint_path)
    if threshold is None:
        threshold = card.threshold
    preds = predict_split(checkpoint_path, ds, split=split, tta=tta, **predict_kwargs)
    known = labelled(preds)
    if known.empty:
        raise InputError(f"{ds.root}: split {split!r} has no labelled patches to evaluate")
    y, prob = known["label"].to_numpy(), known["prob"].to_numpy()
    groups = known_groups(known)
    ci = cached_auc_ci(y, prob, groups, n_boot=n_boot, seed=seed)
    return {
        "checkpoint": str(checkpoint_path),
        "data": str(ds.root),
        "format": ds.format,
        "split": split,
        "manifest_id": ds.manifest_id,  # which patients the split holds (IDC/HCD: its seed)
        "tta": bool(tta),
        "computed_with": dict(preds.attrs),  # device and precision of the probabilities
        **binary_metrics(y, prob, threshold),
        "threshold_source": source,
        **interval_fields(ci, known),
        # the card's map (identity for older cards) and why it is not the one asked for
        "calibration": {
            **Calibration.from_dict(card.calibration).to_dict(),
            "note": card.calibration_note,
        },
        "conformal": coverage(y, prob, card.conformal, groups),  # None: no sets in the card
        "patients": patient_summary(known, threshold),
    }


def interval_fields(ci, known: pd.DataFrame) -> dict:
    """The JSON keys of an AUC interval (evaluate and compare): ``auc_ci95`` [low, high],
    ``ci_unit`` (what was resampled), ``ci_note`` (why patches although patients are known)
    and ``auc_ci``, the interval with everything it rests on (``AucCI.to_dict``)."""
    from core.metrics import ci_unit, known_groups

    return {
        "auc_ci95": list(ci.bounds) if ci else None,
        "ci_unit": ci.unit if ci else ci_unit(known_groups(known)),
        "ci_note": ci.note if ci else "",
        "auc_ci": ci.to_dict() if ci else None,
    }


def calibrate_checkpoint(
    checkpoint_path, ds, out, method: str = "platt", progress=None, device=None
):
    """Fit a calibration map and operating points (``core.calibration.fit_operating_point``,
    guard and conformal quantiles included) on the validation split of ``ds`` from the
    checkpoint's raw softmax, as training does for every best.pt, and write the checkpoint with
    them in its card to ``out`` (the weights unchanged). For checkpoints saved before HistoLens
    calibrated them, and imported ones. ``ds`` must be opened with the checkpoint's own split
    (``open_dataset_for``), so its validation patients are ones it was not trained on.
    Returns the ``Fitted`` result."""

    from core.calibration import fit_operating_point
    from core.checkpoints import load_checkpoint, save_with_card
    from core.device import resolve_device

    indices = np.sort(ds.indices(split="valid"))
    labels = ds.meta["label"].to_numpy()[indices]
    indices, labels = indices[labels >= 0], labels[labels >= 0]
    if np.unique(labels).size < 2:
        raise InputError(
            f"{ds.root}: the validation split needs tumour and normal patches to calibrate on "
            f"({len(indices)} labelled); use the dataset the checkpoint was trained on"
        )
    loaded = load_checkpoint(checkpoint_path, device=resolve_device(str(device or "auto")))
    raw = predict_loaded(loaded, ds, indices, progress=progress, calibrated=False)
    fitted = fit_operating_point(labels, raw, method)
    save_with_card(checkpoint_path, out, fitted.apply_to(loaded.card))
    return fitted
