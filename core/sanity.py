"""Can I trust this map? Randomisation sanity checks, localisation on real patches, and whether
the faithfulness scores agree on which method is best.

- **Model-parameter randomisation test** (MPRT; Adebayo et al., NeurIPS 2018): re-draw the
  weights of a trained model stage by stage, from the head down to the stem (cascading), or one
  stage at a time (independent), and measure how similar each method's map stays to the trained
  model's map. A map that survives the loss of everything the model learnt is an image filter,
  not an explanation. Stages come from the registry (``core.models.ModelSpec.stages``), so a
  check costs a handful of CAM passes per method, not one per module; an architecture whose
  stages are unknown falls back to independent per-module randomisation, with a note.
- Similarity per patch: Spearman rank correlation of |map| (scipy) and the 2-D SSIM of Wang et
  al. (2004) on the maps as images. Every randomisation is drawn with several seeds; the bands
  are a bootstrap 95 % interval over patches (seeds averaged per patch) and the seed spread is
  reported beside them. Depth 0 is the trained model explained twice (1.0 for a deterministic
  method): it is shown, and never part of any average.
- Two controls on the same axes: an edge map of the input (pytorch-grad-cam's ``sobel_cam``),
  which ignores the model and stays at 1, and pytorch-grad-cam's ``RandomCAM`` with its own seed
  fixed, which reads the target layer through random weights: 1.0 until the randomisation reaches
  that layer, then near 0.
- Localisation on real patches: PCam and Kaggle HCD label a patch by tumour in its centre
  32×32 region (the centre ninth); for tumour patches the model calls tumour, the share of map
  mass there and how often the map's maximum falls there, against 1/9 for a uniform map.
- Score agreement: every score ranks the methods; Kendall's τ between those rankings.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyarrow import ArrowException
from pytorch_grad_cam import RandomCAM
from pytorch_grad_cam.sobel_cam import sobel_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import ndimage, stats
from threadpoolctl import threadpool_limits
from torch import nn

from core import config
from core.calls import predict_labels
from core.checkpoints import LoadedModel, model_lock
from core.config import CLASS_NAMES, TARGETS
from core.device import one_thread
from core.errors import InputError
from core.explain import (
    CAM_METHODS,
    RANKED_SCORES,
    SLOW_METHODS,
    compute_cams,
    explained_classes,
    localisation_scores,
    padded_masks,
    road_scores,
    to_unit_maps,
)
from core.files import write_atomic
from core.models import MODELS, Stage, get_target_layer
from core.preprocess import predict_proba, to_model_input
from core.train_config import TrainConfig

LOG = logging.getLogger("histolens")

# ScoreCAM and AblationCAM run one forward pass per channel: 13+ passes each would take minutes
# on a CPU, so the default set leaves them out (they can still be chosen).
DEFAULT_METHODS = tuple(m for m in CAM_METHODS if m not in SLOW_METHODS)
EDGE_CONTROL = "control: edge (Sobel)"
RANDOM_CONTROL = "control: RandomCAM (seed fixed)"
CONTROLS = (EDGE_CONTROL, RANDOM_CONTROL)
MODES = ("cascading", "independent")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_PATCHES = 16
MAX_PATCHES = 64
PUBLIC_MAX_PATCHES = 16  # a shared server runs one check for many visitors
CACHE_VERSION = 1

# The verdict (README "Can I trust this map?" has the measurements behind the numbers).
# It reads |ρ|: a map anti-correlated with the trained one still follows the image's structure
# with its sign flipped (EigenCAM's principal component has no fixed sign), so it is no more
# independent of the learnt weights than a positively correlated one.
# 0.4: a map that knows nothing the model learnt (the RandomCAM control after full
# randomisation) measured |ρ| 0.19 [0.12, 0.27] on 16 demo PCam patches (hcd_cnn) and
# 0.22 [0.16, 0.28] on 16 real IDC patches (bn_cnn), 3 seeds: chance is ~0.2, not 0, because
# the maps are smooth and both come from the same image. A method at chance must pass with
# 16 patches and 3 seeds (interval ±0.05-0.1), while what clearly fails stays above: the edge
# map 1.0, EigenCAM 0.67 and GradCAM++ 0.56 on the demo, EigenCAM 0.47 on IDC.
PASS_MAX_ABS_RHO = 0.4
HEAD_BLIND_RHO = 0.95  # |ρ| after randomising the head alone at or above this: it is ignored
VERDICT_RULE = (
    f"passes when the 95 % interval (over seeds and patches) of mean |Spearman ρ| after full "
    f"cascading randomisation lies at or below {PASS_MAX_ABS_RHO}; fails when it lies above; "
    "uncertain when it straddles it"
)
# BatchNorm is randomised, not reset to identity: γ ~ U(0.5, 1.5), β ~ U(−0.5, 0.5) per channel,
# and the running mean/variance are re-measured on the sample through the randomised layers.
# The trained statistics would keep learnt information; identity (Quantus) leaves the randomised
# network un-normalised and its maps collapse: on the demo GradCAM++ then fell from 0.75 to 0.27
# at the stem and passed, and 16 of 48 GradCAM maps went constant there (2 of 48 with this).
BN_GAMMA = (0.5, 1.5)
BN_BETA = (-0.5, 0.5)
BOOTSTRAP_RESAMPLES = 2000
CENTRE_RULE_FORMATS = ("pcam", "hcd")
UNIFORM_CENTRE_SHARE = 1 / 9  # a 32×32 centre of a 96×96 patch
KENDALL_WARN_BELOW = 0.5
EXAMPLE_PATCHES = 4
SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03  # Wang et al. 2004

Explainer = Callable[[LoadedModel, np.ndarray, np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SanitySample:
    """What the check runs on: uint8 N×H×W×3 patches and what is known about them."""

    images: np.ndarray
    labels: np.ndarray  # int (N,), -1 where unknown (uploads)
    masks: np.ndarray | None  # bool N×H×W ground-truth tumour masks (demo sets), or None
    has_mask: np.ndarray | None  # bool (N,): which patches have a non-empty mask
    data_format: str  # "pcam" | "hcd" | "idc" | "" (uploads)
    key: str  # identifies the sample (cache key)
    description: str


@dataclass(frozen=True)
class SanityReport:
    """The check of one model: tables for the page / CLI and one row of example maps."""

    model: str
    curves: pd.DataFrame  # method, kind, mode, depth, stage, metric, mean, low, high, ...
    verdicts: pd.DataFrame  # method, kind, end_abs_rho, low, high, seed_min, seed_max, verdict
    scores: pd.DataFrame  # method + one column per score that ranks methods
    agreement: pd.DataFrame  # score_a, score_b, kendall_tau, n_methods
    notes: tuple[str, ...]
    example_images: np.ndarray  # uint8 k×H×W×3
    example_trained: np.ndarray  # float32 methods×k×H×W (methods in verdicts order)
    example_randomised: np.ndarray  # same, after full cascading randomisation (first seed)

    @property
    def disagreement(self) -> bool:
        """True when two scores rank the methods with Kendall's τ below 0.5."""
        return bool((self.agreement["kendall_tau"] < KENDALL_WARN_BELOW).any())


def sanity_check(
    loaded: LoadedModel,
    sample: SanitySample,
    methods: Sequence[str] = DEFAULT_METHODS,
    modes: Sequence[str] = ("cascading",),
    seeds: Sequence[int] = DEFAULT_SEEDS,
    target: str = "tumour",
    road: bool = False,
    label: str = "",
    progress: Progress | None = None,
    use_cache: bool = True,
) -> SanityReport:
    """The whole check of one model on ``sample``, from the disk cache when it was run before.

    ``target`` names the class every map explains ("pred": the trained model's called class,
    kept fixed for the randomised copies, so a changed prediction never changes the question).
    ``road`` adds ROAD (core.explain.road_scores on the trained maps: no extra CAM pass, but it
    imputes every patch 8 times per method, several times the rest of the check on a CPU) to the
    scores whose rankings are compared. ``progress(done, total)`` counts CAM passes. The shared
    ``loaded.model`` is copied once under its lock and never changed.
    """
    methods, modes, seeds = _checked_request(methods, modes, seeds, target, sample)
    request = (methods, modes, seeds, target, road)
    cache = cache_path(loaded, sample, *request) if use_cache else None
    cached = read_report(cache) if cache is not None else None
    if cached is not None:
        if progress:
            progress(1, 1)
        return replace(cached, model=label or cached.model)
    with _cpu_threads(loaded):
        report = _run_check(loaded, sample, *request, label, progress)
    if cache is not None:
        write_report(report, cache)
    return report


def _cpu_threads(loaded: LoadedModel):
    """One torch thread on a CPU: the check's many small CAM passes (16 patches each) ran
    2.1x faster in wall time on one thread than on two (bench/sanity.py: 39.5 s vs 81.3 s,
    2 cores at load 3-4); torch's thread count is the process's, restored afterwards."""
    return one_thread() if loaded.device.type == "cpu" else contextlib.nullcontext()


def max_patches() -> int:
    """The most patches one check takes: ``PUBLIC_MAX_PATCHES`` on a public server."""
    return PUBLIC_MAX_PATCHES if config.public_mode() else MAX_PATCHES


def _checked_request(methods, modes, seeds, target, sample):
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown or not methods:
        raise InputError(
            f"unknown CAM method(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from: {', '.join(CAM_METHODS)}"
        )
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes or not modes:
        raise InputError(f"randomisation mode must be one or both of: {', '.join(MODES)}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError("give one or more distinct non-negative randomisation seeds")
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    cap = max_patches()
    n = len(sample.images)
    if not 2 <= n <= cap:
        where = " on this public server" if config.public_mode() else ""
        raise InputError(f"the sanity check takes 2 to {cap} patches{where}; got {n}")
    return tuple(dict.fromkeys(methods)), tuple(m for m in MODES if m in modes), tuple(seeds)


def _run_check(loaded, sample, methods, modes, seeds, target, road, label, progress):
    trained = private_copy(loaded)
    probs = predict_proba(trained, sample.images)
    classes = explained_classes(target, probs, trained.card.threshold)
    explainers = {m: cam_explainer(m) for m in methods} | {
        EDGE_CONTROL: edge_explainer,
        RANDOM_CONTROL: random_cam_explainer(seed=0),
    }
    road_steps = len(methods) if road else 0  # ROAD ticks the same progress once per method
    run = mprt(trained, sample.images, classes, explainers, modes, seeds, progress, road_steps)
    scores, score_notes = method_scores(
        trained, sample, run.reference, classes, probs, methods, road, run.counter.tick
    )
    k = min(EXAMPLE_PATCHES, len(sample.images))
    shown = [*methods, *CONTROLS]
    return SanityReport(
        model=label or trained.path.stem,
        curves=run.curves,
        verdicts=verdict_table(run.curves, len(run.plan.stages)),
        scores=scores,
        agreement=score_agreement(scores),
        notes=tuple(n for n in (run.plan.note, *_constant_notes(run.curves), *score_notes) if n),
        example_images=sample.images[:k],
        example_trained=np.stack([run.reference[m][:k] for m in shown]),
        example_randomised=np.stack([run.randomised[m][:k] for m in shown]),
    )


@dataclass(frozen=True)
class MprtRun:
    curves: pd.DataFrame  # summarise(): one row per explainer × mode × depth × metric
    plan: StagePlan
    reference: dict[str, np.ndarray]  # the trained model's maps per explainer
    randomised: dict[str, np.ndarray]  # after the deepest randomisation (first mode and seed)
    counter: _Counter


def mprt(
    trained: LoadedModel,
    images: np.ndarray,
    classes: np.ndarray,
    explainers: Mapping[str, Explainer],
    modes: Sequence[str] = ("cascading",),
    seeds: Sequence[int] = DEFAULT_SEEDS,
    progress: Progress | None = None,
    extra_steps: int = 0,
) -> MprtRun:
    """The model-parameter randomisation test of ``explainers`` on a private copy of a model
    (``private_copy``): the trained maps, the same maps again (depth 0), then the maps of
    every randomised copy (``randomised_models``) per mode and seed. ``progress`` counts
    explainer passes plus ``extra_steps`` steps the caller ticks afterwards."""
    plan = stage_plan(trained.model, trained.card.arch)
    modes = modes if plan.cascading else ("independent",)
    passes = len(explainers) * (2 + len(seeds) * len(plan.stages) * len(modes))
    counter = _Counter(passes + extra_steps, progress)
    reference = counter.run(explainers, trained, images, classes)
    rows = _similarity_rows(reference, counter.run(explainers, trained, images, classes), 0, "")
    randomised = {}
    x = to_model_input(images, trained.card, trained.device)
    for mode in modes:
        for seed in seeds:
            for depth, model in enumerate(randomised_models(trained.model, plan, mode, seed, x), 1):
                maps = counter.run(explainers, replace(trained, model=model), images, classes)
                rows += _similarity_rows(reference, maps, depth, mode, seed)
                randomised = randomised or (maps if depth == len(plan.stages) else {})
    stage_names = {0: "trained (explained twice)"} | {
        d: s.name for d, s in enumerate(plan.stages, 1)
    }
    curves = summarise(pd.DataFrame(rows), stage_names)
    return MprtRun(curves, plan, reference, randomised, counter)


def private_copy(loaded: LoadedModel) -> LoadedModel:
    """A deep copy of the model (under its lock: no other thread's hooks are copied along), so
    the check never touches the shared, cached model."""
    with model_lock(loaded.model):
        model = copy.deepcopy(loaded.model)
    for p in model.parameters():
        p.requires_grad_(False)  # CAMs need gradients at the activations only
    return replace(loaded, model=model.eval())


class _Counter:
    """Runs every explainer once on a model and reports CAM passes to ``progress``."""

    def __init__(self, total: int, progress: Progress | None):
        self.done, self.total, self.progress = 0, total, progress

    def run(self, explainers, loaded, images, classes) -> dict[str, np.ndarray]:
        maps = {}
        for name, explain in explainers.items():
            maps[name] = explain(loaded, images, classes)
            self.tick()
        return maps

    def tick(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)


# --- explainers: (model, uint8 images, class per image) -> float32 N×H×W maps in [0, 1] -------


def cam_explainer(method: str) -> Explainer:
    """A core.explain CAM of each image's given class (one call per class present)."""

    def explain(loaded, images, classes):
        maps = np.zeros(images.shape[:3], np.float32)
        for c in np.unique(classes):
            rows = classes == c
            maps[rows] = compute_cams(loaded, images[rows], method, CLASS_NAMES[int(c)]).cams
        return maps

    return explain


def edge_explainer(loaded, images, classes) -> np.ndarray:
    """pytorch-grad-cam's Sobel edge map of the input: the same whatever the model."""
    edges = np.stack([sobel_cam(np.ascontiguousarray(image)) for image in images])
    return to_unit_maps(edges.astype(np.float32), images.shape[1:3])


class _SeededRandomCAM(RandomCAM):
    """pytorch-grad-cam's RandomCAM (uniform random channel weights on the target layer's
    activations) with its own seed: RandomCAM draws from NumPy's global generator, so it would
    be a different map on every call and match even the unchanged model only weakly."""

    def __init__(self, model, target_layers, seed: int):
        super().__init__(model, target_layers)
        self.seed = seed

    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
        rng = np.random.default_rng(self.seed)
        return rng.uniform(-1, 1, size=(grads.shape[0], grads.shape[1]))


def random_cam_explainer(seed: int) -> Explainer:
    def explain(loaded, images, classes):
        layer = get_target_layer(loaded.model, loaded.card.target_layer)
        x = to_model_input(images, loaded.card, loaded.device).requires_grad_(True)
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        with model_lock(loaded.model), threadpool_limits(1, "blas"):
            with _SeededRandomCAM(loaded.model, [layer], seed) as cam:
                maps = cam(input_tensor=x, targets=targets)
            loaded.model.zero_grad(set_to_none=True)
        return to_unit_maps(maps, images.shape[1:3])

    return explain


# --- randomisation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    stages: tuple[Stage, ...]  # head first, down to the stem
    cascading: bool  # False for the per-module fallback: registration order is no depth order
    note: str | None = None


def stage_plan(model: nn.Module, arch: str) -> StagePlan:
    """The registry's stages of ``arch`` when they resolve in ``model`` and hold every parameter
    exactly once; otherwise one stage per module with parameters (independent randomisation
    only), with a note saying so."""
    spec = MODELS.get(arch)
    stages = spec.stages if spec else ()
    problem = _stage_problem(model, stages) if stages else "the registry lists no stages for it"
    if problem is None:
        return StagePlan(stages, cascading=True)
    modules = [
        Stage(name or "(model)", (name,))
        for name, m in reversed(list(model.named_modules()))
        if any(True for _ in m.parameters(recurse=False))
    ]
    return StagePlan(
        tuple(modules),
        cascading=False,
        note=(
            f"{arch}: stage layout unknown ({problem}); each of its {len(modules)} modules with "
            "parameters is randomised on its own (independent, no cascading order)."
        ),
    )


def _stage_problem(model: nn.Module, stages: Sequence[Stage]) -> str | None:
    seen: dict[int, str] = {}
    for stage in stages:
        for path in stage.modules:
            try:
                module = get_target_layer(model, path)
            except ValueError:
                return f"no module {path!r}"
            for p in module.parameters():
                if id(p) in seen:
                    return f"{path!r} shares parameters with stage {seen[id(p)]!r}"
                seen[id(p)] = stage.name
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    return f"{len(missing)} parameters in no stage, e.g. {missing[0]!r}" if missing else None


def randomised_models(model: nn.Module, plan: StagePlan, mode: str, seed: int, x: torch.Tensor):
    """Yields one randomised copy per depth: cascading re-draws stages 1..d (head first) in one
    copy; independent re-draws stage d alone in a fresh copy. Stage d is drawn from the same
    seed in both modes. BatchNorm statistics of the re-drawn stages are re-measured on ``x``."""
    cascade = copy.deepcopy(model) if mode == "cascading" else None
    for depth, stage in enumerate(plan.stages, 1):
        current = cascade if cascade is not None else copy.deepcopy(model)
        randomise_stage(current, stage, seed=seed * 1000 + depth)
        drawn = plan.stages[:depth] if cascade is not None else (stage,)
        _remeasure_batchnorm(current, drawn, x)
        yield current


def randomise_stage(model: nn.Module, stage: Stage, seed: int) -> None:
    """Re-draws every parameter of ``stage`` in place: convolutions and linear layers from
    their own default initialisation (what an untrained model starts from), normalisation
    layers' γ and β uniformly around identity; any other parameter from a normal of its own
    spread. Torch's global random state is left as it was."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for path in stage.modules:
            for module in get_target_layer(model, path).modules():
                _redraw(module)


def _redraw(module: nn.Module) -> None:
    own = dict(module.named_parameters(recurse=False))
    if not own:
        return
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        if "weight" in own:
            own["weight"].uniform_(*BN_GAMMA)
        if "bias" in own:
            own["bias"].uniform_(*BN_BETA)
    elif isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
        module.reset_parameters()
    else:
        for p in own.values():
            p.normal_(0.0, float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0)


def _remeasure_batchnorm(model: nn.Module, stages: Sequence[Stage], x: torch.Tensor) -> None:
    norms = [
        m
        for stage in stages
        for path in stage.modules
        for m in get_target_layer(model, path).modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass gives the sample's statistics
        m.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.eval()


# --- similarity ------------------------------------------------------------------------------


def _similarity_rows(reference, maps, depth: int, mode: str, seed: int | None = None):
    rows = []
    for name, ref in reference.items():
        rho, ssim_values, constant = map_similarity(ref, maps[name])
        rows += [
            {
                "method": name,
                "mode": mode,
                "depth": depth,
                "seed": seed,
                "patch": i,
                "spearman": rho[i],
                "ssim": ssim_values[i],
                "constant": constant[i],
            }
            for i in range(len(ref))
        ]
    return rows


def map_similarity(a: np.ndarray, b: np.ndarray):
    """Per pair of N×H×W maps: Spearman ρ of |map| (NaN where either map is constant: a rank
    correlation does not exist there), 2-D SSIM, and which pairs hold a constant map."""
    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    constant = (np.ptp(flat_a, axis=1) == 0) | (np.ptp(flat_b, axis=1) == 0)
    rho = np.full(len(a), np.nan)
    for i in np.flatnonzero(~constant):
        rho[i] = stats.spearmanr(flat_a[i], flat_b[i]).statistic
    return rho, ssim(a, b), constant


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM of each pair of 2-D maps (N×H×W), Wang et al. 2004: an 11-tap Gaussian window
    (σ = 1.5), K1 = 0.01, K2 = 0.03, population covariances, borders of half a window left out
    of the mean. Same definition as scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``; tests/reference/ssim_reference.json holds its values."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"SSIM compares 2-D maps of one shape, got {a.shape} and {b.shape}")
    if a.ndim == 2:
        return ssim(a[None], b[None], data_range)[0]

    def smooth(img):
        return ndimage.gaussian_filter(
            img, sigma=(0, SSIM_SIGMA, SSIM_SIGMA), truncate=SSIM_TRUNCATE, mode="reflect"
        )

    ux, uy = smooth(a), smooth(b)
    vx, vy, vxy = smooth(a * a) - ux * ux, smooth(b * b) - uy * uy, smooth(a * b) - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return s[:, pad:-pad, pad:-pad].mean(axis=(1, 2))


def summarise(similarities: pd.DataFrame, stage_names: Mapping[int, str]) -> pd.DataFrame:
    """One row per method × mode × depth × metric: the mean over patches of the seed-averaged
    per-patch value, its 95 % interval (``bootstrap_ci`` over seeds and patches), the range of
    the per-seed means, how many patches entered it and how many map pairs held a constant map
    (no Spearman; left out of every mean and counted here).
    Metrics: ``abs_spearman`` (what the verdict reads), ``spearman`` (signed), ``ssim``."""
    frame = similarities.assign(
        abs_spearman=similarities["spearman"].abs(), seed=similarities["seed"].fillna(-1)
    )
    rows = []
    for (method, mode, depth), group in frame.groupby(["method", "mode", "depth"], sort=False):
        for metric in ("abs_spearman", "spearman", "ssim"):
            grid = group.pivot_table(index="seed", columns="patch", values=metric, dropna=False)
            grid = grid.to_numpy(float)  # seeds × patches, NaN where a map was constant
            per_patch = _nanmean(grid, axis=0)
            per_seed = _nanmean(grid, axis=1)
            low, high = bootstrap_ci(grid)
            rows.append(
                {
                    "method": method,
                    "kind": "control" if method in CONTROLS else "method",
                    "mode": mode or "—",
                    "depth": int(depth),
                    "stage": stage_names[int(depth)],
                    "metric": metric,
                    "mean": float(_nanmean(per_patch)),
                    "low": low,
                    "high": high,
                    "seed_min": np.nanmin(per_seed) if np.isfinite(per_seed).any() else np.nan,
                    "seed_max": np.nanmax(per_seed) if np.isfinite(per_seed).any() else np.nan,
                    "n_patches": int(np.isfinite(per_patch).sum()),
                    "n_constant": int(group["constant"].sum()),
                    "n_maps": len(group),
                }
            )
    return pd.DataFrame(rows)


def _nanmean(values: np.ndarray, axis=None):
    """np.nanmean without its warning for all-NaN slices (they stay NaN)."""
    values = np.asarray(values, float)
    counts = np.isfinite(values).sum(axis=axis)
    sums = np.nansum(values, axis=axis)
    return np.divide(sums, counts, out=np.full(np.shape(sums), np.nan), where=counts > 0)


def bootstrap_ci(grid: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of a seeds × patches grid (NaN: constant map), from
    a two-level bootstrap that resamples seeds and patches with replacement, so the interval
    holds the spread between randomisation seeds as well as between patches. scipy's
    ``stats.bootstrap`` resamples one level only. NaN with fewer than two patches."""
    grid = np.atleast_2d(np.asarray(grid, float))
    n_seeds, n_patches = grid.shape
    if np.isfinite(grid).any(axis=0).sum() < 2:
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    seeds = rng.integers(n_seeds, size=(BOOTSTRAP_RESAMPLES, n_seeds, 1))
    patches = rng.integers(n_patches, size=(BOOTSTRAP_RESAMPLES, 1, n_patches))
    means = _nanmean(_nanmean(grid[seeds, patches], axis=1), axis=1)  # as "mean": per patch first
    low, high = np.nanpercentile(means, [2.5, 97.5])
    return float(low), float(high)


def verdict_table(curves: pd.DataFrame, n_stages: int) -> pd.DataFrame:
    """Per method and control: |ρ| after full cascading randomisation with its interval and seed
    range, the verdict by ``VERDICT_RULE``, the curve's mean over the randomised depths
    (``mean_over_depths``), and a note when randomising the head alone leaves the map unchanged.
    Without a cascading run (per-module fallback) the verdict is "not run"."""
    rho = curves[curves["metric"] == "abs_spearman"]
    over_depths = mean_over_depths(curves)
    rows = []
    for method, group in rho.groupby("method", sort=False):
        cascading = group[group["mode"] == "cascading"].set_index("depth")
        end = cascading.loc[n_stages] if n_stages in cascading.index else pd.Series(dtype=float)
        head = cascading["mean"].get(1, np.nan)
        rows.append(
            {
                "method": method,
                "kind": group["kind"].iloc[0],
                "end_abs_rho": end.get("mean", np.nan),
                **{k: end.get(k, np.nan) for k in ("low", "high", "seed_min", "seed_max")},
                "verdict": _verdict(end),
                "mean_over_depths": over_depths.get(method, np.nan),
                "note": (
                    "unchanged when only the head is randomised: the map ignores the class scores"
                    if method not in CONTROLS and head >= HEAD_BLIND_RHO
                    else ""
                ),
            }
        )
    return pd.DataFrame(rows)


def _verdict(end: pd.Series) -> str:
    if end.empty:
        return "not run (no cascading order)"
    if end["n_patches"] == 0:
        return "no verdict (every map constant)"
    if end["high"] <= PASS_MAX_ABS_RHO:
        return "passes"
    if end["low"] > PASS_MAX_ABS_RHO:
        return "fails"
    return "uncertain"


def mean_over_depths(curves: pd.DataFrame, metric: str = "abs_spearman") -> pd.Series:
    """Per method (cascading): the mean of the curve over the randomised depths 1..D (an
    area under the curve); depth 0, the trained model against itself, is never in it."""
    rows = curves[
        (curves["metric"] == metric) & (curves["mode"] == "cascading") & (curves["depth"] > 0)
    ]
    return rows.groupby("method", sort=False)["mean"].mean()


def _constant_notes(curves: pd.DataFrame) -> list[str]:
    """One line per method whose maps were constant somewhere (no rank correlation there)."""
    rows = curves[(curves["metric"] == "spearman") & (curves["n_constant"] > 0)]
    return [
        f"{method}: constant maps (no rank correlation, left out of ρ) in "
        + ", ".join(f"{r.n_constant}/{r.n_maps} pairs at {r.stage}" for r in group.itertuples())
        + "."
        for method, group in rows.groupby("method", sort=False)
    ]


# --- localisation and score agreement --------------------------------------------------------


def centre_region(size: tuple[int, int]) -> np.ndarray:
    """bool H×W, the centre third of each side: PCam's 32×32 labelling region of a 96×96 patch."""
    h, w = size
    region = np.zeros((h, w), bool)
    region[h // 3 : h - h // 3, w // 3 : w - w // 3] = True
    return region


def centre_scores(maps: np.ndarray) -> dict[str, float]:
    """Share of map mass inside the centre region, and how often the maximum falls inside."""
    region = np.broadcast_to(centre_region(maps.shape[1:3]), maps.shape)
    scores = localisation_scores(maps, region)
    return {"centre_mass": scores["energy_in_mask"], "centre_pointing": scores["pointing_hit_rate"]}


def method_scores(loaded, sample, reference, classes, probs, methods, road=False, tick=None):
    """One row per method with every score that ranks methods on this sample: ROAD combined
    (all patches, when ``road``), centre mass and pointing (PCam/HCD tumour patches the model calls tumour),
    mask pointing and energy (demo patches with ground-truth masks). Returns (table, notes)."""
    called_tumour = (sample.labels == 1) & (predict_labels(probs, loaded.card.threshold) == 1)
    notes = []
    if sample.data_format not in CENTRE_RULE_FORMATS:
        what = "IDC labels whole patches" if sample.data_format == "idc" else "uploads have none"
        notes.append(
            f"No centre-region localisation: {what}; only PCam and Kaggle HCD label a patch by "
            "tumour in its centre 32×32 region."
        )
    elif not called_tumour.any():
        notes.append(
            "No centre-region localisation: localisation needs tumour patches that the model "
            "calls tumour, and this sample has none."
        )
    rows = []
    for method in methods:
        maps = reference[method]
        row = {"method": method}
        if road:
            morf, lerf = road_scores(loaded, sample.images, maps, classes)
            row["road_combined"] = float(((lerf - morf) / 2).mean())
            if tick:
                tick()
        if sample.data_format in CENTRE_RULE_FORMATS and called_tumour.any():
            tumour_maps = _tumour_maps(loaded, sample.images, maps, classes, called_tumour, method)
            row |= centre_scores(tumour_maps) | {"centre_n": int(called_tumour.sum())}
        if sample.has_mask is not None and sample.has_mask.any():
            with_mask = sample.has_mask & (classes == 1)
            if with_mask.any():
                row |= localisation_scores(maps[with_mask], sample.masks[with_mask])
        rows.append(row)
    return pd.DataFrame(rows), notes


def _tumour_maps(loaded, images, maps, classes, rows, method) -> np.ndarray:
    """Maps of the tumour class for ``rows``: the reference maps where they explain tumour."""
    if (classes[rows] == 1).all():
        return maps[rows]
    return compute_cams(loaded, images[rows], method, "tumour").cams


# Score columns that rank methods, and whether higher is better (core.explain.RANKED_SCORES
# plus the centre-region scores).
SCORES = {"road_combined": True, "centre_mass": True, "centre_pointing": True} | RANKED_SCORES


def score_agreement(scores: pd.DataFrame) -> pd.DataFrame:
    """Kendall's τ (scipy, τ-b: ties allowed) between every two scores' rankings of the
    methods; NaN when a score is the same for every method. Needs three methods or more."""
    present = [c for c in SCORES if c in scores and scores[c].notna().all()]
    rows = []
    if len(scores) >= 3:
        for a, b in combinations(present, 2):
            sign = 1 if SCORES[a] == SCORES[b] else -1
            tau = stats.kendalltau(scores[a], sign * scores[b]).statistic
            rows.append({"score_a": a, "score_b": b, "kendall_tau": tau, "n_methods": len(scores)})
    return pd.DataFrame(rows, columns=["score_a", "score_b", "kendall_tau", "n_methods"])


# --- samples ---------------------------------------------------------------------------------


def dataset_sample(
    ds, indices: Sequence[int], key: str = "", images: np.ndarray | None = None
) -> SanitySample:
    """The sample of the given dataset patches, with labels and (demo sets) masks. ``images``:
    those patches when the caller has already read them (``ds.read_batch(indices)``)."""
    indices = np.asarray(indices, int)
    if images is None:
        images = (
            ds.read_batch(indices) if len(indices) else np.zeros((0, *ds.image_size, 3), np.uint8)
        )
    labels = ds.meta["label"].to_numpy(int)[indices]
    masks = has_mask = None
    if ds.synthetic:
        masks = padded_masks([ds.mask(int(i)) for i in indices], images.shape[:3])
        has_mask = masks.reshape(len(masks), -1).any(axis=1)
    if not key:
        fingerprint = ds.data_fingerprint(indices)
        key = f"{Path(ds.root).resolve()}|{ds.manifest_id}|{_digest(indices)}|{fingerprint}"
    return SanitySample(
        images=images,
        labels=labels,
        masks=masks,
        has_mask=has_mask,
        data_format=ds.format,
        key=key,
        description=f"{len(indices)} patches of {ds.format.upper()} "
        f"({int((labels == 1).sum())} tumour, {int((labels == 0).sum())} normal)",
    )


def shown_sample(ds, names: Sequence[str], images: np.ndarray, key: str) -> SanitySample:
    """The Explain page's current selection: its dataset patches (by id, with labels and
    masks) or, without a dataset, its uploads."""
    if ds is None:
        return upload_sample(images, key)
    position = pd.Series(np.arange(len(ds)), index=ds.meta["id"].astype(str))
    return dataset_sample(ds, position.loc[[str(n) for n in names]].to_numpy(), key, images)


def upload_sample(images: np.ndarray, key: str) -> SanitySample:
    images = np.asarray(images)
    return SanitySample(
        images, np.full(len(images), -1), None, None, "", key, f"{len(images)} uploaded patches"
    )


def pick_indices(ds, split: str | None, n: int, seed: int = 0) -> np.ndarray:
    """``n`` patches of ``split``, half tumour where both classes exist (seeded), so that
    localisation has tumour patches to score."""
    rng = np.random.default_rng(seed)
    tumour = rng.permutation(ds.indices(split=split, label=1))
    normal = rng.permutation(ds.indices(split=split, label=0))
    n_tumour = min(len(tumour), max(n - len(normal), (n + 1) // 2))
    chosen = np.concatenate([tumour[:n_tumour], normal[: n - n_tumour]])
    return np.sort(chosen.astype(int))


def _digest(values) -> str:
    return hashlib.sha256(np.asarray(values).tobytes()).hexdigest()[:16]


# --- disk cache ------------------------------------------------------------------------------


def cache_path(loaded, sample, methods, modes, seeds, target, road) -> Path:
    """``config.cache_dir()/sanity/<sha12>-<key16>.npz``: the key hashes the checkpoint, the
    sample (data identity + file fingerprint, or the uploads' digest) and its pixels, the
    methods, modes, seeds, target, ROAD or not, and CACHE_VERSION."""
    identity = {
        "checkpoint_sha256": loaded.sha256,
        "sample": sample.key,
        "pixels": hashlib.sha256(np.ascontiguousarray(sample.images).tobytes()).hexdigest(),
        "methods": list(methods),
        "modes": list(modes),
        "seeds": list(seeds),
        "target": target,
        "road": road,
        "device": loaded.device.type,
        "version": CACHE_VERSION,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return config.cache_dir() / "sanity" / f"{loaded.sha256[:12]}-{key}.npz"


TABLES = ("curves", "verdicts", "scores", "agreement")
ARRAYS = ("example_images", "example_trained", "example_randomised")


def write_report(report: SanityReport, path: Path) -> None:
    """Tables as parquet bytes and the example maps as arrays in one .npz (no pickle),
    written atomically; an unwritable cache folder is one logged notice, no error."""
    payload = {name: _parquet_bytes(getattr(report, name)) for name in TABLES}
    payload |= {name: getattr(report, name) for name in ARRAYS}
    payload |= {"model": np.asarray(report.model), "notes": np.asarray(json.dumps(report.notes))}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **payload)
    try:
        write_atomic(path, lambda fh: fh.write(buffer.getvalue()))
    except OSError as err:
        LOG.warning("note: sanity cache %s is not writable (%s)", path.parent, err.strerror)


def _parquet_bytes(table: pd.DataFrame) -> np.ndarray:
    out = io.BytesIO()
    table.to_parquet(out, index=False)
    return np.frombuffer(out.getvalue(), np.uint8)


def read_report(path: Path) -> SanityReport | None:
    """The cached report, or None when absent or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            tables = {name: pd.read_parquet(io.BytesIO(data[name].tobytes())) for name in TABLES}
            return SanityReport(
                model=str(data["model"]),
                notes=tuple(json.loads(str(data["notes"]))),
                **tables,
                **{name: data[name] for name in ARRAYS},
            )
    except (OSError, ValueError, KeyError, ArrowException) as err:
        LOG.warning("note: sanity cache %s is unreadable (%s); recomputing", path, err)
        return None


# --- data randomisation test -----------------------------------------------------------------

# Run settings that do not change what a model learns; a shuffled-label twin may differ in them.
NOT_RECIPE = ("device", "workers", "log_every", "best_fp16", "precision")


def shuffled_label_config(card) -> TrainConfig | None:
    """The trained model's own recipe with shuffled training labels (same architecture, data,
    split and seed), or None when its card does not say how it was trained."""
    if not card.train_config or card.train_config.get("shuffle_labels"):
        return None
    try:
        return TrainConfig.from_dict({**card.train_config, "shuffle_labels": True})
    except (TypeError, ValueError):
        return None


def shuffled_label_run(card, runs_dir: Path | None = None):
    """The newest run (core.run_folder.RunInfo) training ``card``'s recipe on shuffled labels, or
    None: a finished one when there is one, else one still going."""
    from core.run_folder import ACTIVE_STATES, list_runs

    wanted = shuffled_label_config(card)
    if wanted is None:
        return None
    recipe = {k: v for k, v in asdict(wanted).items() if k not in NOT_RECIPE}
    twins = [
        run
        for run in list_runs(runs_dir)
        if {k: run.config.get(k) for k in recipe} == recipe
        and (run.state in ACTIVE_STATES or (run.path / "best.pt").is_file())
    ]
    finished = [r for r in twins if r.state == "finished" and (r.path / "best.pt").is_file()]
    return (finished or twins or [None])[0]


def shuffled_label_checkpoint(run) -> Path | None:
    """The best.pt of a shuffled-label twin from ``shuffled_label_run`` once it has finished;
    None for no twin or one still going (it takes the run, so a caller that also shows the run
    lists the runs once)."""
    if run is None or run.state != "finished":
        return None
    return run.path / "best.pt"


def start_shuffled_label_run(card, runs_dir: Path | None = None) -> Path:
    """Start the shuffled-label twin of ``card``'s recipe as a background run (core.jobs),
    named "shuffled-labels"; an InputError when the card has no recipe or its data is gone."""
    from core.jobs import start_run

    cfg = shuffled_label_config(card)
    if cfg is None:
        raise InputError(
            "this checkpoint's card does not record how it was trained (an imported or older "
            "model): the data randomisation test needs its recipe"
        )
    if not Path(cfg.data).is_dir():
        raise InputError(f"{cfg.data}: the data this checkpoint was trained on is not here")
    return start_run(cfg, runs_dir, name="shuffled-labels")


def data_randomisation(
    trained: LoadedModel,
    shuffled: LoadedModel,
    sample: SanitySample,
    methods: Sequence[str] = DEFAULT_METHODS,
    target: str = "tumour",
) -> pd.DataFrame:
    """The data randomisation test: per method, how similar the maps of the model trained on
    shuffled labels are to the trained model's (same columns as the curves, depth 1 =
    "shuffled labels", plus the verdict by the same rule as the parameter test)."""
    methods, _, _ = _checked_request(methods, ("cascading",), (0,), target, sample)
    if shuffled.card.arch != trained.card.arch:
        raise InputError(
            f"{shuffled.path.name} is a {shuffled.card.arch}, not a {trained.card.arch}: the "
            "data randomisation test compares the same architecture"
        )
    with _cpu_threads(trained):
        return _data_randomisation(
            private_copy(trained), private_copy(shuffled), sample, methods, target
        )


def _data_randomisation(first, second, sample, methods, target) -> pd.DataFrame:
    classes = explained_classes(target, predict_proba(first, sample.images), first.card.threshold)
    explainers = {m: cam_explainer(m) for m in methods} | {EDGE_CONTROL: edge_explainer}
    reference = {
        name: explain(first, sample.images, classes) for name, explain in explainers.items()
    }
    maps = {name: explain(second, sample.images, classes) for name, explain in explainers.items()}
    rows = _similarity_rows(reference, maps, 1, "shuffled labels", seed=0)
    curves = summarise(pd.DataFrame(rows), {1: "model trained on shuffled labels"})
    ends = curves[curves["metric"] == "abs_spearman"].set_index("method")
    verdicts = {m: _verdict(ends.loc[m]) for m in ends.index}
    return curves.assign(verdict=curves["method"].map(verdicts))
