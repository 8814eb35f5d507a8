"""Class activation maps (pytorch-grad-cam), overlays, and how far the maps can be trusted.

- ``CAM_METHODS`` is the registry of pytorch-grad-cam classes offered everywhere (UI, CLI, tests).
- ``compute_cams`` explains a uint8 batch with one method: preprocessing comes from the model
  card (never pytorch-grad-cam's ``preprocess_image``, whose mean=std=0.5 is not our models'),
  the target layer from the card (overridable), the CAM object lives in a ``with`` block so its
  hooks are removed, and the returned maps are float32 N×H×W in [0, 1] at the *input's* H×W.
- A CAM object calls ``model.eval()``, registers hooks on the model and (AblationCAM) swaps a
  layer in place, so a model shared between threads (``st.cache_resource``) is only touched under
  its own lock: concurrent calls give the same maps as serial ones.
- Faithfulness: ROAD (``pytorch_grad_cam.metrics.road``) removes the most / least relevant pixels
  first and records the change in softmax confidence; on the demo sets, whose tumour masks are
  known, the pointing game and the share of CAM energy inside the mask measure localisation.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.metrics.road import (
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirstAverage,
)
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)
from threadpoolctl import threadpool_limits

from core.calls import DECISION_THRESHOLD, predict_labels
from core.checkpoints import LoadedModel, check_finite_probabilities, model_lock
from core.config import TARGETS
from core.d4 import D4_GROUP
from core.errors import InputError
from core.models import get_target_layer
from core.preprocess import to_model_input
from core.uploads import UploadedPatch, UploadError, load_upload

CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
# Gradient-free methods run one forward pass per channel of the target layer: slow on CPU.
SLOW_METHODS = frozenset({"scorecam", "ablationcam"})


COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}

ROAD_PERCENTILES = (20, 40, 60, 80)
CAM_BATCH_SIZE = 32


@dataclass(frozen=True)
class CamResult:
    cams: np.ndarray  # float32 N×H×W in [0, 1], at the input images' H×W
    probs: np.ndarray  # float32 (N,) calibrated P(tumour), as every page reports it (core.calls)
    classes: np.ndarray  # int (N,) class index each map explains
    threshold: float = DECISION_THRESHOLD  # the call is tumour where probs >= threshold

    @property
    def called(self) -> np.ndarray:
        """int (N,): the class each patch is called (1 = tumour) at ``threshold``."""
        return predict_labels(self.probs, self.threshold)


def compute_cams(
    loaded: LoadedModel,
    images: np.ndarray,
    method: str = "gradcam",
    target: str = "pred",
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    tta: bool = False,
    target_layer: str | None = None,
    batch_size: int = CAM_BATCH_SIZE,
    threshold: float | None = None,
) -> CamResult:
    """CAMs of ``method`` for uint8 RGB ``images`` (N×H×W×3 or H×W×3), in batches.

    ``target`` is "tumour", "normal" or "pred": the class each patch is *called*, i.e. the
    card's calibrated P(tumour) at ``threshold`` (the card's operating point unless given), the
    same call every page and command reports (``core.calls``), not the raw softmax's argmax.
    ``tta`` averages the maps over the 8 D4 transforms after undoing each one; ``aug_smooth`` is
    pytorch-grad-cam's own flip/brightness smoothing; ``eigen_smooth`` takes the first principal
    component. ``batch_size`` also sets how many perturbed copies ScoreCAM / AblationCAM score
    at once.
    """
    if method not in CAM_METHODS:
        raise InputError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    threshold = float(loaded.card.threshold if threshold is None else threshold)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    layer = get_target_layer(loaded.model, target_layer or loaded.card.target_layer)
    parts = [
        _cams_for_batch(
            loaded,
            images[i : i + batch_size],
            layer,
            method,
            target,
            threshold,
            _Smoothing(aug_smooth, eigen_smooth, tta),
            batch_size,
        )
        for i in range(0, len(images), batch_size)
    ]
    cams, probs, classes = zip(*parts, strict=True) if parts else ((), (), ())
    h, w = images.shape[1:3]
    return CamResult(
        cams=np.concatenate(cams) if parts else np.zeros((0, h, w), np.float32),
        probs=np.concatenate(probs) if parts else np.zeros(0, np.float32),
        classes=np.concatenate(classes) if parts else np.zeros(0, int),
        threshold=threshold,
    )


@dataclass(frozen=True)
class _Smoothing:
    aug_smooth: bool
    eigen_smooth: bool
    tta: bool


def explained_classes(target: str, probs, threshold: float) -> np.ndarray:
    """The class a map explains per patch: ``target``'s fixed class, or (``"pred"``) each
    patch's call from its P(tumour) ``probs`` at ``threshold``."""
    fixed = TARGETS[target]
    return predict_labels(probs, threshold) if fixed is None else np.full(len(probs), fixed, int)


def _cams_for_batch(loaded, images, layer, method, target, threshold, smoothing, batch_size):
    model = loaded.model
    x = to_model_input(images, loaded.card, loaded.device)
    maps = None
    with model_lock(model):
        # The patch's call comes first, from the same calibrated probability and threshold as
        # everywhere else; the map then explains that class (or the fixed one asked for).
        probs = _calibrated_probs(loaded, x)
        classes = explained_classes(target, probs, threshold)
        try:
            # pytorch-grad-cam's numpy work (EigenCAM's per-image SVD) runs on OpenBLAS threads that
            # fight torch's own threads on a small CPU: one BLAS thread measured 16× faster there.
            with _make_cam(method, model, layer, batch_size) as cam, threadpool_limits(1, "blas"):
                maps = _run_cam(cam, x, classes, smoothing)
        except Exception:
            _check_feature_map(model, layer, x[:1])  # the clear reason, when that is it
            raise
        finally:
            model.zero_grad(set_to_none=True)  # do not leave .grad tensors on a shared model
        if maps is None:
            _check_feature_map(model, layer, x[:1])
    if maps is None:  # pytorch-grad-cam's __exit__ swallows IndexError; never pass that on silently
        raise RuntimeError(f"{method} failed on {loaded.path} (IndexError inside pytorch-grad-cam)")
    return to_unit_maps(maps, images.shape[1:3]), probs, classes


def _calibrated_probs(loaded: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """float32 calibrated P(tumour) of a preprocessed batch (fp32, as ``predict_proba``)."""
    with torch.no_grad():
        logits = loaded.model(x)
    raw = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
    check_finite_probabilities(raw, loaded.path)
    return loaded.card.calibrated(raw).astype(np.float32)


def _check_feature_map(model, layer, x) -> None:
    """An InputError when ``layer``'s output is not an N×C×H×W feature map (a card or
    --target-layer naming e.g. the Linear head): pytorch-grad-cam then fails with messages
    such as 'Invalid grads shape' that do not name the layer."""
    shapes = []
    handle = layer.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if shapes and len(shapes[0]) != 4:
        raise InputError(
            f"target layer {type(layer).__name__} gives {'×'.join(map(str, shapes[0]))}, not "
            "a feature map (N×C×H×W): CAMs need a convolutional layer; pass --target-layer"
        )


def _make_cam(method: str, model, layer, batch_size: int):
    cls = CAM_METHODS[method]
    # AblationCAM's default AblationLayer() is one module-level instance shared by every call:
    # give each CAM its own so concurrent models never share ablation state.
    extra = {"ablation_layer": AblationLayer()} if cls is AblationCAM else {}
    cam = cls(model=model, target_layers=[layer], **extra)
    cam.batch_size = batch_size  # read by ScoreCAM and AblationCAM when scoring perturbed copies
    return cam


def _run_cam(cam, x, classes, smoothing: _Smoothing) -> np.ndarray:
    """Maps N×h×w at the model input size, each explaining ``classes[i]``. The targets are
    fixed up front, so the several forward passes of TTA and aug_smooth agree on the class."""
    x = x.requires_grad_(True)  # gradients reach the activations even if weights are frozen
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    if not smoothing.tta:
        return cam(
            input_tensor=x,
            targets=targets,
            aug_smooth=smoothing.aug_smooth,
            eigen_smooth=smoothing.eigen_smooth,
        )
    # Our own D4 loop rather than pytorch-grad-cam's tta_transforms (ttach): core.d4 is the one
    # definition of the 8 transforms, shared with training augmentation and prediction TTA, and
    # aug_smooth (the library's flip + brightness TTA) still composes inside each transform;
    # tta_transforms replaces aug_smooth's list and is fixed when the CAM object is built.
    maps = [
        g.invert(
            cam(
                input_tensor=g.apply(x),
                targets=targets,
                aug_smooth=smoothing.aug_smooth,
                eigen_smooth=smoothing.eigen_smooth,
            )
        )
        for g in D4_GROUP
    ]
    return np.mean(maps, axis=0)


def to_unit_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize N×h×w maps to ``size`` (h, w) and rescale each to [0, 1].

    NaN/inf (e.g. AblationCAM dividing by a zero score) become 0; a constant map becomes all zeros
    rather than dividing by zero.
    """
    h, w = size
    out = np.empty((len(maps), h, w), np.float32)
    for i, m in enumerate(
        np.nan_to_num(np.asarray(maps, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    ):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) if m.shape != (h, w) else m
        m = m - m.min()
        peak = m.max()
        out[i] = m / peak if peak > 1e-8 else 0.0
    return np.clip(out, 0.0, 1.0)


def overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet"
) -> np.ndarray:
    """uint8 H×W×3 image with the CAM drawn over it; ``alpha`` is the heatmap's opacity."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colormap {colormap!r}; choose one of: {', '.join(COLORMAPS)}")
    if cam.shape != image.shape[:2]:
        cam = to_unit_maps(cam[None], image.shape[:2])[0]
    return show_cam_on_image(
        image.astype(np.float32) / 255.0,
        cam,
        use_rgb=True,
        colormap=COLORMAPS[colormap],
        image_weight=1.0 - alpha,
    )


# --- gallery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryColumn:
    model: str  # label of the checkpoint
    method: str
    result: CamResult


@dataclass(frozen=True)
class Gallery:
    images: np.ndarray  # uint8 N×H×W×3, rows of the grid
    names: tuple[str, ...]
    columns: tuple[GalleryColumn, ...]  # model × method

    def overlays(self, alpha: float = 0.5, colormap: str = "jet") -> list[list[np.ndarray]]:
        """rows × columns of uint8 overlays."""
        return [
            [overlay(image, col.result.cams[i], alpha, colormap) for col in self.columns]
            for i, image in enumerate(self.images)
        ]


def explain_gallery(
    models: Mapping[str, LoadedModel],
    images: np.ndarray,
    names: Sequence[str],
    methods: Sequence[str],
    target: str = "pred",
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    tta: bool = False,
    thresholds: Mapping[str, float] | None = None,
) -> Gallery:
    """CAMs for a whole page of patches: one batched call per model × method. ``thresholds``
    (by model label) replace a card's threshold where a page lets the user move it."""
    thresholds = thresholds or {}
    columns = tuple(
        GalleryColumn(
            label,
            method,
            compute_cams(
                loaded,
                images,
                method,
                target,
                aug_smooth,
                eigen_smooth,
                tta,
                threshold=thresholds.get(label),
            ),
        )
        for label, loaded in models.items()
        for method in methods
    )
    return Gallery(images=np.asarray(images), names=tuple(names), columns=columns)


def overlays_zip(gallery: Gallery, alpha: float = 0.5, colormap: str = "jet") -> bytes:
    """A zip of PNGs: ``<patch>__<model>__<method>.png`` per overlay plus ``<patch>__original.png``.

    Names are made safe for every file system and stay unique: "gradcam++" is written
    "gradcamplusplus" (not "gradcam"), and names that still coincide (patches "a/b" and "a_b")
    get "~2", "~3"… so no overlay is ever dropped."""
    buffer, used = io.BytesIO(), set()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, image, row in zip(
            gallery.names, gallery.images, gallery.overlays(alpha, colormap), strict=True
        ):
            stem = _safe_stem(name)
            zf.writestr(_unique(f"{stem}__original", used), _png_bytes(image))
            for col, picture in zip(gallery.columns, row, strict=True):
                entry = f"{stem}__{_safe_stem(col.model)}__{_safe_stem(col.method)}"
                zf.writestr(_unique(entry, used), _png_bytes(picture))
    return buffer.getvalue()


def _safe_stem(text: str) -> str:
    text = str(text).replace("+", "plus")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "patch"


def _unique(stem: str, used: set[str]) -> str:
    """``stem.png``, or ``stem~k.png`` with the smallest k that no earlier entry took."""
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}~{k}.png"
    used.add(name)
    return name


def _png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


# --- faithfulness -----------------------------------------------------------------------------


def road_scores(
    loaded: LoadedModel,
    images: np.ndarray,
    cams: np.ndarray,
    classes: np.ndarray,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ROAD (MoRF, LeRF): mean change of softmax confidence in ``classes`` after
    imputing the most / least relevant pixels. Faithful maps: MoRF very negative, LeRF near 0.

    The imputer adds noise, so it runs under a fixed torch seed (same inputs -> same scores).
    """
    x = to_model_input(images, loaded.card, loaded.device)
    cams_in = to_unit_maps(cams, tuple(x.shape[-2:]))
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    with model_lock(loaded.model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        morf = ROADMostRelevantFirstAverage(list(percentiles))(x, cams_in, targets, loaded.model)
        lerf = ROADLeastRelevantFirstAverage(list(percentiles))(x, cams_in, targets, loaded.model)
    return np.asarray(morf, np.float32), np.asarray(lerf, np.float32)


def pointing_hits(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """True where each map's maximum falls inside the ground-truth mask (the pointing game)."""
    flat = cams.reshape(len(cams), -1).argmax(axis=1)
    return masks.reshape(len(masks), -1)[np.arange(len(masks)), flat]


def energy_in_mask(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's total mass that lies inside the mask (0 for an all-zero map)."""
    total = cams.reshape(len(cams), -1).sum(axis=1)
    inside = (cams * masks).reshape(len(cams), -1).sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def faithfulness_table(
    models: Mapping[str, LoadedModel],
    images: np.ndarray,
    methods: Sequence[str],
    masks: np.ndarray | None = None,
    target: str = "tumour",
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """One row per model × method on the given sample, ranked within each model (1 = best);
    ``progress(done, total)`` after each of them (ROAD takes seconds per pair on a CPU).

    Columns: ``road_morf`` (lower is better), ``road_lerf`` (higher), ``road_combined`` =
    (LeRF − MoRF)/2 (higher); with ``masks`` (bool N×H×W, tumour patches) also
    ``pointing_hit_rate``, ``random_point_rate`` (hit rate of a uniformly random point = mean mask
    area) and ``energy_in_mask``. ``rank`` orders methods by the mean of their per-score ranks.
    """
    rows, pairs = [], [(label, loaded, m) for label, loaded in models.items() for m in methods]
    for label, loaded, method in pairs:
        result = compute_cams(loaded, images, method, target)
        morf, lerf = road_scores(loaded, images, result.cams, result.classes, percentiles, seed)
        row = {
            "model": label,
            "method": method,
            "n": len(images),
            "road_morf": float(morf.mean()),
            "road_lerf": float(lerf.mean()),
            "road_combined": float(((lerf - morf) / 2).mean()),
        }
        if masks is not None:
            row |= localisation_scores(result.cams, masks)
        rows.append(row)
        if progress:
            progress(len(rows), len(pairs))
    return rank_methods(pd.DataFrame(rows))


def localisation_scores(cams: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    masks = np.asarray(masks, bool)
    return {
        "pointing_hit_rate": float(pointing_hits(cams, masks).mean()),
        "random_point_rate": float(masks.reshape(len(masks), -1).mean(axis=1).mean()),
        "energy_in_mask": float(energy_in_mask(cams, masks).mean()),
    }


# Score columns and whether higher is better; the rank averages the ranks of those present.
RANKED_SCORES = {"road_combined": True, "pointing_hit_rate": True, "energy_in_mask": True}


def rank_methods(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    scores = [c for c in RANKED_SCORES if c in table]
    ranks = pd.concat(
        [
            table.groupby("model")[c].rank(ascending=not RANKED_SCORES[c], method="min")
            for c in scores
        ],
        axis=1,
    )
    table = table.assign(mean_rank=ranks.mean(axis=1))
    table["rank"] = table.groupby("model")["mean_rank"].rank(method="min").astype(int)
    return table.sort_values(["model", "rank"]).reset_index(drop=True)


# --- choosing what to explain ----------------------------------------------------------------

OUTCOMES = ("TP", "FP", "FN", "TN")


def outcomes(
    labels: np.ndarray, probs: np.ndarray, threshold: float = DECISION_THRESHOLD
) -> np.ndarray:
    """TP/FP/FN/TN per patch (tumour = positive); "" where the label is unknown (-1)."""
    labels, called = np.asarray(labels), predict_labels(probs, threshold)
    table = {(1, 1): "TP", (0, 1): "FP", (1, 0): "FN", (0, 0): "TN"}
    return np.array([table.get((int(y), int(c)), "") for y, c in zip(labels, called, strict=True)])


def select_patches(
    ds,
    split: str | None = None,
    label: int | None = None,
    outcome: str | None = None,
    preds: pd.DataFrame | None = None,
    threshold: float = DECISION_THRESHOLD,
) -> np.ndarray:
    """Positional indices of ``ds`` matching split / label and, given a checkpoint's predictions
    (``core.evaluate.predict_split`` frame with ``id, label, prob``), the outcome TP/FP/FN/TN."""
    indices = ds.indices(split=split, label=label)
    if outcome is None:
        return indices
    if preds is None:
        raise ValueError("filtering by outcome needs the checkpoint's predictions")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; choose one of: {', '.join(OUTCOMES)}")
    wanted = set(preds["id"][outcomes(preds["label"], preds["prob"], threshold) == outcome])
    ids = ds.meta["id"].to_numpy()[indices]
    return indices[np.fromiter((i in wanted for i in ids), bool, len(ids))]


def load_uploads(files, size: int) -> tuple[list[UploadedPatch], list[str]]:
    """Decode ``(name, bytes)`` pairs; returns the usable patches and one error line per bad file."""
    patches, errors = [], []
    for name, data in files:
        try:
            patches.append(load_upload(name, data, size))
        except UploadError as err:
            errors.append(str(err))
    return patches, errors


@dataclass(frozen=True)
class FaithfulnessSample:
    images: np.ndarray  # uint8 N×H×W×3
    masks: np.ndarray | None  # bool N×H×W ground-truth tumour masks, or None
    key: str  # identifies the sample (cache key)
    description: str  # one line for the page


def faithfulness_sample(ds, split, n: int, shown: np.ndarray, shown_key: str) -> FaithfulnessSample:
    """What faithfulness is scored on: on a synthetic set, up to ``n`` tumour patches of
    ``split`` with ground-truth masks (pointing game, energy in mask); otherwise, or when none
    has a mask, the first ``n`` of the ``shown`` patches (``shown_key`` identifies them)."""
    if ds is not None and ds.synthetic:
        idx, images, masks = tumour_sample(ds, n, split)
        if len(idx):
            return FaithfulnessSample(
                images,
                masks,
                f"{ds.root}|{split}|{','.join(map(str, idx))}",
                f"Sample: {patches(len(idx))} of tumour with ground-truth masks from split "
                f"{split or 'all'}.",
            )
    images = shown[:n]
    return FaithfulnessSample(
        images,
        None,
        f"{shown_key}|{n}",
        f"Sample: the first {patches(len(images))} shown above (no ground-truth masks).",
    )


def patches(n: int) -> str:
    return f"{n} patch" if n == 1 else f"{n} patches"


def tumour_sample(
    ds, n: int = 16, split: str | None = "test", seed: int = 0, max_mask_fraction: float = 1.0
):
    """Up to ``n`` tumour patches that have a ground-truth mask (demo sets): (indices, images, masks).

    ``max_mask_fraction`` < 1 keeps only partly tumorous patches, where pointing at the tumour is
    informative (a random point already hits a mask covering the whole patch)."""
    candidates = ds.indices(split=split, label=1)
    rng = np.random.default_rng(seed)
    chosen, masks = [], []
    for i in rng.permutation(candidates):
        mask = ds.mask(int(i))
        if mask is not None and mask.any() and mask.mean() <= max_mask_fraction:
            chosen.append(int(i))
            masks.append(np.asarray(mask, bool))
        if len(chosen) == n:
            break
    images = ds.read_batch(chosen) if chosen else np.zeros((0, *ds.image_size, 3), np.uint8)
    return np.asarray(chosen, int), images, padded_masks(masks, images.shape[:3])


def padded_masks(masks, shape) -> np.ndarray:
    """Boolean masks of ``shape`` (N×h×w), each of ``masks`` in its top-left corner (read_batch
    pads edge patches bottom/right too); a None mask stays all False."""
    padded = np.zeros(shape, bool)
    for k, mask in enumerate(masks):
        if mask is not None:
            padded[k, : mask.shape[0], : mask.shape[1]] = mask
    return padded
