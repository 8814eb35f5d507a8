"""Stain: normalisation towards a target (Macenko, Reinhard) and graded stain shifts (HED jitter,
Macenko augmentation), on uint8 RGB patches (N×H×W×3), robust where the libraries are not.

- Macenko's stain estimation and Reinhard's colour transfer come from torchstain (numpy backend:
  no torch, no TensorFlow). Macenko's per-patch decomposition is torchstain's
  ``NumpyMacenkoAugmentor.fit`` (its one public call that hands back a patch's stain matrix
  ``HERef``, concentrations ``CRef`` and their 99th percentiles ``maxCRef``); the image is rebuilt
  from them here exactly as torchstain's ``normalize`` / ``augment`` do, so that a failure shows
  as a non-finite number (torchstain casts NaN to uint8 silently) and the augmentation draws from
  a generator seeded per patch (torchstain's ``augment`` draws from numpy's global one).
- HED jitter is the training augmentation's own colour transform (``core.augment``), without its
  D4 transform, at a chosen strength; ``strength`` 0.05 is what training uses.
- Robustness: Macenko fails on patches with little tissue (torchstain issues #1 and #55: an empty
  selection into ``kthvalue``/``percentile``, ``LinAlgError`` from ``eigh`` of a NaN covariance;
  PathML #329) and Reinhard divides by a zero spread on a uniform patch. A patch with less than
  ``MIN_TISSUE_FRACTION`` of stained pixels (torchstain's own rule: optical density ≥ 0.15 in
  every channel), or one the library still fails on, is passed through unchanged and flagged in
  ``StainResult.untreated``: nothing crashes and every caller can count them.

A normalisation target is a JSON-able dict (the model card's ``stain_norm``; {} = none):
``{"method": "macenko", "stain_matrix": [[H r,g,b], [E r,g,b]], "max_concentrations": [H, E]}``
or ``{"method": "reinhard", "means": [L, a, b], "stds": [L, a, b]}`` (CIELAB, L in 0..100).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from core.errors import InputError

STAIN_METHODS = ("macenko", "reinhard")
# torchstain's defaults: transmitted light, the optical density below which a channel is
# background, and the percentile that picks the two extreme stain angles.
IO, BETA, ALPHA = 240, 0.15, 1
MIN_TISSUE_FRACTION = 0.01  # of a patch's pixels; below it a patch is passed through
MIN_TISSUE_PIXELS = 16  # and never fewer than this (percentiles of a handful of pixels are noise)
MIN_LAB_SPREAD = 0.5  # CIELAB units (a just-noticeable difference is ~1-2): Reinhard divides by it
FIT_PATCHES = 256  # patches pooled into one image to fit a target
_STAINED_MAX = IO * math.exp(-BETA) - 1  # OD ≥ BETA  <=>  value ≤ this, per channel


@dataclass(frozen=True)
class StainResult:
    images: np.ndarray  # uint8 N×H×W×3
    untreated: np.ndarray  # bool (N,): passed through unchanged (too little tissue, or it failed)


def normalise(images: np.ndarray, target: dict) -> StainResult:
    """Each patch moved to ``target``'s stain (a card's ``stain_norm``); never one pooled over
    the batch, so a patch's result does not depend on its neighbours."""
    images = _batch(images)
    if target["method"] == "macenko":
        stains = np.asarray(target["stain_matrix"], dtype=float).T  # 3×2, torchstain's HERef
        reference = np.asarray(target["max_concentrations"], dtype=float)

        def one(patch, _seed):
            decomposed = _decompose(patch)
            if decomposed is None:
                return None
            _, concentrations, maxima = decomposed
            return _compose(stains, concentrations / (maxima / reference)[:, None], patch.shape)

        return _per_patch(images, one)
    return _per_patch(images, _reinhard(target))


def macenko_augment(images: np.ndarray, strength: float, seeds: Iterable[int]) -> StainResult:
    """torchstain's Macenko augmentation (``sigma1 = sigma2 = strength``): each stain's
    concentration × U(1 − s, 1 + s) + U(−s, s), from a generator seeded per patch. One draw per
    patch scaled by ``strength``, so a stronger shift moves the same patch further the same way."""

    def one(patch, seed):
        decomposed = _decompose(patch)
        if decomposed is None:
            return None
        stains, concentrations, _ = decomposed
        scale, shift = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(2, 2))
        moved = concentrations * (1 + strength * scale)[:, None] + (strength * shift)[:, None]
        return _compose(stains, moved, patch.shape)

    return _per_patch(_batch(images), one, seeds)


def hed_jitter(images: np.ndarray, strength: float, seeds: Iterable[int]) -> np.ndarray:
    """The training augmentation's HED stain + brightness jitter (``core.augment``) at
    ``strength`` (its stain scale and brightness; the stain shift keeps training's ratio to the
    scale), one draw per patch from a generator seeded per patch, no D4 transform. Never fails."""
    import torch

    from core.augment import Augmentation, recolour
    from core.device import one_thread

    images = _batch(images)
    default = Augmentation()
    jitter = Augmentation(
        stain_scale=strength,
        stain_shift=strength * default.stain_shift / default.stain_scale,
        brightness=strength,
    )
    draws = [torch.rand(7, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    if len(draws) != len(images):
        raise ValueError(f"{len(draws)} seeds for {len(images)} patches")
    if not draws:
        return images.copy()
    n, h, w, _ = images.shape
    pixels = torch.from_numpy(np.ascontiguousarray(images)).reshape(n, h * w, 3)
    # one thread (per calling thread under OpenMP): 1.1 vs 3.7 ms per 96 px patch on busy cores
    with one_thread():
        matrix, offset = jitter.colour_transform_of(torch.stack(draws))
        return recolour(pixels, matrix, offset).reshape(n, h, w, 3).numpy()


def fit_target(method: str, images: np.ndarray) -> dict:
    """The ``stain_norm`` target of ``method`` fitted on ``images`` pooled into one image (the
    training patches' stain, never a single patch's). InputError when they hold too little tissue."""
    if method not in STAIN_METHODS:
        raise InputError(f"unknown stain normalisation {method!r}; use one of {STAIN_METHODS}")
    images = _batch(images)
    pooled = images.reshape(-1, images.shape[2], 3)  # N×H×W×3 -> one (N·H)×W×3 image
    if not _enough_tissue(pooled):
        raise InputError(
            f"the {len(images)} patches given to fit a {method} stain target are almost all "
            f"background (under {MIN_TISSUE_FRACTION:.0%} stained pixels): fit on tissue patches"
        )
    if method == "reinhard":
        from torchstain.numpy.normalizers import NumpyReinhardNormalizer

        fitted = NumpyReinhardNormalizer()
        with np.errstate(divide="raise", invalid="raise"):
            fitted.fit(pooled)
        return {
            "method": method,
            "means": [float(v) for v in fitted.target_means],
            "stds": [float(v) for v in fitted.target_stds],
        }
    decomposed = _decompose(pooled, check_tissue=False)
    if decomposed is None:
        raise InputError(
            f"torchstain could not estimate a Macenko stain from {len(images)} patches"
        )
    stains, _, maxima = decomposed
    return {
        "method": method,
        "stain_matrix": stains.T.tolist(),
        "max_concentrations": maxima.tolist(),
    }


def fit_on_patches(method: str, ds, indices, seed: int = 0) -> dict:
    """``fit_target`` on a seeded sample of ``FIT_PATCHES`` of ``ds``'s patches at ``indices``
    (training: its training split, never a test patch)."""
    from core.data.splits import sample_indices

    return fit_target(method, ds.read_batch(sample_indices(indices, FIT_PATCHES, seed)))


def with_lightness(target: dict, delta: float) -> dict:
    """A Reinhard target ``delta`` CIELAB L units paler (> 0) or darker (< 0)."""
    means = list(target["means"])
    means[0] += delta
    return {**target, "means": means}


def target_problem(value) -> str | None:
    """None when ``value`` is a valid ``stain_norm`` card field ({} or a target), else what
    is wrong (for the card's field check)."""
    if value == {}:
        return None
    if not isinstance(value, dict) or value.get("method") not in STAIN_METHODS:
        return f"{{}} or a stain target with method {' or '.join(STAIN_METHODS)}"
    keys = (
        {"stain_matrix": (2, 3), "max_concentrations": (2,)}
        if value["method"] == "macenko"
        else {"means": (3,), "stds": (3,)}
    )
    if set(value) != {"method", *keys}:
        return f"a {value['method']} target with exactly {', '.join(['method', *keys])}"
    for key, shape in keys.items():
        try:
            array = np.asarray(value[key], dtype=float)
        except (TypeError, ValueError):
            array = np.zeros(0)
        if array.shape != shape or not np.isfinite(array).all():
            return f"{key} as {'×'.join(map(str, shape))} finite numbers"
    positive = ("max_concentrations", "stds")
    if any(k in value and min(value[k]) <= 0 for k in positive):
        return "max_concentrations / stds above 0"
    return None


def patch_seeds(ids: Iterable, seed: int = 0) -> np.ndarray:
    """One seed per patch id (int64), so a patch is shifted the same way in every batch, page
    and run, whatever its neighbours."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=7).digest(), "big")
            for i in ids
        ],
        dtype=np.int64,
    )


def stained_fraction(images: np.ndarray) -> np.ndarray:
    """Per patch, the share of pixels torchstain counts as stained (OD ≥ 0.15 in every channel)."""
    images = _batch(images)
    return (images <= _STAINED_MAX).all(axis=-1).mean(axis=(1, 2))


# -- helpers, in call order ---------------------------------------------------------------------


def _batch(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 N×H×W×3 RGB patches, got {images.dtype} {images.shape}")
    return images


def _decompose(patch: np.ndarray, check_tissue: bool = True):
    """torchstain's Macenko estimate of one image: (stain matrix 3×2, concentrations 2×P, their
    99th percentiles (2,)), or None when it has too little tissue or the estimate is unusable."""
    from torchstain.numpy.augmentors import NumpyMacenkoAugmentor

    if check_tissue and not _enough_tissue(patch):
        return None
    estimate = NumpyMacenkoAugmentor()
    try:
        with np.errstate(divide="raise", invalid="raise", over="raise"):
            estimate.fit(patch, Io=IO, alpha=ALPHA, beta=BETA)
    except (np.linalg.LinAlgError, FloatingPointError, ValueError, IndexError):
        return None
    stains, concentrations, maxima = estimate.HERef, estimate.CRef, estimate.maxCRef
    usable = all(np.isfinite(a).all() for a in (stains, concentrations, maxima))
    return (stains, concentrations, maxima) if usable and (maxima > 0).all() else None


def _enough_tissue(image: np.ndarray) -> bool:
    stained = int((image.reshape(-1, 3) <= _STAINED_MAX).all(axis=-1).sum())
    pixels = image.size // 3
    return stained >= max(MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION * pixels)


def _compose(stains: np.ndarray, concentrations: np.ndarray, shape) -> np.ndarray | None:
    """The image of these stains and concentrations, as torchstain writes it (values above 255
    cut to 255, then truncated to uint8); None when a number is not finite."""
    with np.errstate(over="ignore"):  # an overflow is inf, caught just below
        image = IO * np.exp(-stains @ concentrations)
    if not np.isfinite(image).all():
        return None
    image[image > 255] = 255
    return image.T.reshape(shape).astype(np.uint8)


def _reinhard(target: dict) -> Callable:
    """Reinhard's transfer of one patch, as torchstain's ``NumpyReinhardNormalizer.normalize``
    does it (its own colour conversions and statistics), with one check it lacks: a channel whose
    spread is under ``MIN_LAB_SPREAD`` (a uniform or grey patch) would be divided by ~0 and its
    float noise blown up to full colour, so that patch is passed through."""
    from torchstain.numpy.utils import (
        get_mean_std,
        lab2rgb,
        lab_merge,
        lab_split,
        rgb2lab,
        standardize,
    )

    means, stds = target["means"], target["stds"]

    def one(patch, _seed):
        if not _enough_tissue(patch):
            return None
        channels = lab_split(rgb2lab(patch.astype("float32") / 255))
        stats = [get_mean_std(c) for c in channels]
        if min(spread for _, spread in stats) < MIN_LAB_SPREAD:
            return None
        moved = [
            standardize(c, mean, spread) * to_spread + to_mean
            for c, (mean, spread), to_mean, to_spread in zip(
                channels, stats, means, stds, strict=True
            )
        ]
        return (lab2rgb(lab_merge(*moved)) * 255).astype("uint8")

    return one


def _per_patch(images: np.ndarray, one: Callable, seeds: Iterable[int] | None = None):
    """``one(patch, seed) -> uint8 patch | None`` over the batch; None passes the patch through.

    One BLAS thread: these are tiny per-patch solves (3×2 least squares, 3×3 eigh), and on a
    busy CPU OpenBLAS's threads made Macenko 13× slower (22 vs 1.7 ms per 96 px patch)."""
    seeds = [None] * len(images) if seeds is None else list(seeds)
    if len(seeds) != len(images):
        raise ValueError(f"{len(seeds)} seeds for {len(images)} patches")
    out = images.copy()
    untreated = np.zeros(len(images), dtype=bool)
    with _blas().limit(limits=1, user_api="blas"):
        for k, (patch, seed) in enumerate(zip(images, seeds, strict=True)):
            result = one(patch, seed)
            if result is None:
                untreated[k] = True
            else:
                out[k] = result
    return StainResult(out, untreated)


@functools.cache
def _blas():
    """numpy's BLAS, found once: ``threadpool_limits`` scans the loaded libraries on every call
    (4.4 ms, as long as a patch's normalisation), a kept controller's ``limit`` takes 10 µs."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
