"""Will it hold at another hospital? Checkpoints compared under graded stain shifts.

For each strength of one shift family (``SHIFTS``: HED jitter as in training, Macenko
augmentation, Reinhard normalisation towards the data's own mean stain made darker or paler) and
each checkpoint: AUC (patient-resampled 95% CI where patients are known, ``core.metrics``; kept
beside the predictions by ``core.evaluate.cached_auc_ci``), balanced accuracy at the card's threshold, ECE, and the share of patches whose call flips against
the unshifted patches. Between models, at each strength, the paired AUC difference (DeLong;
Obuchowski's patient-clustered DeLong where patients are known). A one-line summary says which
model degrades least and by how much.

Predictions are the same calibrated P(tumour) as everywhere else (``core.evaluate.predict_split``
and its cache, with the shift in the key); the shifted patches go through each card's own
preprocessing (``core.preprocess.to_model_input``). Every patch is shifted by a draw seeded by its
id (``core.stain.patch_seeds``), so a patch moves the same way for every model, page and run.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from core import config, stain
from core.errors import InputError


@dataclass(frozen=True)
class ShiftFamily:
    strengths: tuple[float, ...]  # the default sweep
    label: str  # what a strength means, for captions and the CLI
    axis: str  # the same, short enough for a chart's x axis


SHIFTS: dict[str, ShiftFamily] = {
    "hed": ShiftFamily(
        (0.05, 0.1, 0.2, 0.3, 0.4, 0.5),
        "HED jitter: each stain ×U(1±s), brightness ×U(1±s) (training uses s = 0.05)",
        "HED jitter s",
    ),
    "macenko": ShiftFamily(
        (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
        "Macenko augmentation: each stain's concentration ×U(1±s) + U(±s)",
        "Macenko s",
    ),
    "reinhard": ShiftFamily(
        (-20.0, -10.0, -5.0, 0.0, 5.0, 10.0),
        "Reinhard normalisation to the data's own mean stain, s CIELAB L units paler (−: darker)",
        "L units paler (−: darker)",
    ),
}
METRICS = ("auc", "balanced_accuracy", "ece", "flip_share")  # one figure each
Progress = Callable[[int, int], None]


def shift_family(name: str) -> ShiftFamily:
    """``SHIFTS[name]``; an unknown name is one line naming the known ones."""
    if name not in SHIFTS:
        raise InputError(f"unknown shift {name!r}; use one of {', '.join(SHIFTS)}")
    return SHIFTS[name]


def strength_label(strength: float) -> str:
    """How a table row's strength reads: NaN is the unshifted patches."""
    return "unshifted" if pd.isna(strength) else f"{strength:g}"


@dataclass(frozen=True)
class StainShift:
    """One shift: a family, a strength, the seed of the per-patch draws, and for Reinhard the
    reference stain (means, stds) it moves towards."""

    family: str
    strength: float
    seed: int = 0
    reference: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def key(self) -> str:
        """What the prediction cache keys on."""
        ref = None if self.reference is None else [[round(v, 4) for v in r] for r in self.reference]
        return json.dumps([self.family, float(self.strength), self.seed, ref])

    def apply(self, images: np.ndarray, ids) -> stain.StainResult:
        seeds = stain.patch_seeds(ids, self.seed)
        if self.family == "hed":
            shifted = stain.hed_jitter(images, self.strength, seeds)
            return stain.StainResult(shifted, np.zeros(len(images), dtype=bool))
        if self.family == "macenko":
            return stain.macenko_augment(images, self.strength, seeds)
        means, stds = self.reference
        target = {"method": "reinhard", "means": list(means), "stds": list(stds)}
        return stain.normalise(images, stain.with_lightness(target, self.strength))

    def reader(self, ds) -> ShiftedPatches:
        return ShiftedPatches(ds, self)


class ShiftedPatches:
    """``ds`` read through a stain shift: ``read_batch`` is all ``core.evaluate``'s loader
    calls. Remembers which patches the shift passed through unchanged."""

    def __init__(self, ds, shift: StainShift):
        self.ds, self.shift = ds, shift
        self._ids = ds.meta["id"].astype(str).to_numpy()
        self._untreated: set[int] = set()

    def read_batch(self, indices) -> np.ndarray:
        indices = np.asarray(indices)
        result = self.shift.apply(self.ds.read_batch(indices), self._ids[indices])
        self._untreated.update(indices[result.untreated].tolist())
        return result.images

    def untreated(self, indices) -> np.ndarray:
        return np.isin(np.asarray(indices), list(self._untreated))


@dataclass(frozen=True)
class Sweep:
    """A sweep's results. ``table``: one row per model and strength (NaN strength = unshifted)
    with n, auc, auc_low, auc_high, balanced_accuracy, ece, flip_share, untreated. ``paired``:
    per strength and model pair, auc_diff (a − b) with its 95% CI and p-value."""

    family: str
    strengths: tuple[float, ...]
    split: str
    n: int
    ci_unit: str  # what the AUC intervals and paired tests resample: "patient" or "patch"
    unit_note: str  # why patches, when patients are known but too few
    thresholds: dict[str, float]
    table: pd.DataFrame
    paired: pd.DataFrame
    summary: str
    checkpoints: dict[str, str] = field(default_factory=dict)  # name -> path

    @property
    def notes(self) -> list[str]:
        """What a reader must know besides the numbers (CLI, JSON and page say the same)."""
        notes = [f"intervals and paired tests: {self.unit_note}"] if self.unit_note else []
        untreated = int(self.table["untreated"].max())
        if untreated:
            notes.append(
                f"{untreated} of {self.n} patches had too little tissue for the {self.family} "
                "shift and were passed through unchanged"
            )
        return notes

    def to_json(self) -> dict:
        """The `robustness --json` object."""

        def rows(frame):
            return json.loads(frame.to_json(orient="records"))

        return {
            "shift": self.family,
            "shift_means": SHIFTS[self.family].label,
            "strengths": list(self.strengths),
            "split": self.split,
            "n": self.n,
            "ci_unit": self.ci_unit,
            "unit_note": self.unit_note,
            "checkpoints": self.checkpoints,
            "thresholds": self.thresholds,
            "table": rows(self.table),
            "paired": rows(self.paired),
            "summary": self.summary,
            "notes": self.notes,
        }


def robustness_sweep(
    checkpoints: Sequence,
    ds,
    split: str = "test",
    family: str = "hed",
    strengths: Sequence[float] | None = None,
    n: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    progress: Progress | None = None,
    **predict_kwargs,
) -> Sweep:
    """Every checkpoint on ``n`` patches of ``split`` (all when None), unshifted and at each
    strength of ``family`` (its default strengths when None). ``seed`` seeds the per-patch
    shifts and the bootstrap; ``n_boot`` 0 = no CIs (a quick preview). ``predict_kwargs`` go to
    ``core.evaluate.predict_split`` (batch_size, device, precision; loader: by default each
    checkpoint is loaded once for the whole sweep)."""
    from core.catalogue import card_thresholds, model_names
    from core.data.splits import sample_indices
    from core.evaluate import predict_split, split_fingerprint, split_indices

    defaults = shift_family(family).strengths
    strengths = tuple(float(s) for s in (defaults if strengths is None else strengths))
    if not strengths or any(not math.isfinite(s) for s in strengths):
        raise InputError(f"strengths {list(strengths)}: give one or more finite numbers")
    paths = [str(p) for p in checkpoints]
    if not paths:
        raise InputError("give one or more checkpoints")
    names = model_names(paths)
    thresholds = card_thresholds(paths)
    indices = sample_indices(split_indices(ds, split), n)
    if not len(indices):
        raise InputError(f"{ds.root}: split {split!r} has no patches")
    reference = _reference_stain(ds, indices, seed) if family == "reinhard" else None
    shifts = [None] + [StainShift(family, s, seed, reference) for s in strengths]
    count = _counter(progress, len(shifts) * len(paths) * len(indices))
    predict_kwargs.setdefault("loader", _load_once())
    predict_kwargs.setdefault("fingerprint", split_fingerprint(ds, split))  # one for all 7×M
    preds = {
        (name, shift): predict_split(
            path, ds, split, shift=shift, n=n, progress=count(), **predict_kwargs
        )
        for shift in shifts
        for name, path in zip(names, paths, strict=True)
    }
    table = _table(preds, names, shifts, thresholds, n_boot, seed)
    unit = _unit(preds[names[0], None])
    return Sweep(
        family=family,
        strengths=strengths,
        split=split,
        n=len(indices),
        ci_unit=unit.name,
        unit_note=unit.note,
        thresholds=thresholds,
        table=table,
        paired=_paired(preds, names, shifts, unit),
        summary=summary_line(table, family),
        checkpoints=dict(zip(names, paths, strict=True)),
    )


PREVIEW_PATCHES = 64  # the first, quick pass of a background sweep (no CIs)
# A public server (core.config.public_mode) runs one sweep at a time for all its visitors, on at
# most this many patches: a sweep is minutes of CPU, and the box has no more than 2 cores.
PUBLIC_MAX_PATCHES = 256
PUBLIC_BUSY = "another visitor's sweep is running on this shared server; try again when it ends"
_PUBLIC_SWEEPS = threading.BoundedSemaphore(1)


class SweepCancelled(Exception):
    """Raised inside a background sweep when it is cancelled."""


@dataclass(frozen=True)
class SweepState:
    """What a background sweep has done: ``stage`` is "preview", "full", "done", "failed"
    or "cancelled"; ``done``/``total`` count patch predictions of the current stage."""

    stage: str
    done: int
    total: int
    preview: Sweep | None
    result: Sweep | None
    error: str | None

    @property
    def running(self) -> bool:
        return self.stage in ("preview", "full")


class SweepJob:
    """``robustness_sweep`` in a daemon thread: first on ``PREVIEW_PATCHES`` patches without
    CIs (seconds) when ``n`` asks for more, then on the requested ``n``. Never touches the UI: a
    page polls ``state()``. On a public server: at most ``PUBLIC_MAX_PATCHES``, one at a time.
    Bad input (InputError) ends it ``failed`` with its one line; a bug keeps its traceback in
    the thread and ends it ``failed`` with the exception's name."""

    def __init__(
        self, checkpoints, ds, split, family, strengths=None, n=None, n_boot=1000, **kwargs
    ):
        self._public = config.public_mode()
        if self._public:
            n = PUBLIC_MAX_PATCHES if n is None else min(n, PUBLIC_MAX_PATCHES)
        self._args = (list(checkpoints), ds, split, family, strengths)
        self._n, self._n_boot, self._kwargs = n, n_boot, kwargs
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._state = SweepState("preview", 0, 0, None, None, None)
        self._thread = threading.Thread(target=self._run, name="robustness-sweep", daemon=True)
        self._thread.start()

    def state(self) -> SweepState:
        with self._lock:
            return self._state

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        if self._public and not _PUBLIC_SWEEPS.acquire(blocking=False):
            self._update(stage="failed", error=PUBLIC_BUSY)
            return
        try:
            if self._n is None or self._n > PREVIEW_PATCHES:
                self._update(preview=self._stage("preview", PREVIEW_PATCHES, n_boot=0))
            self._update(stage="done", result=self._stage("full", self._n, self._n_boot))
        except SweepCancelled:
            self._update(stage="cancelled")
        except InputError as err:
            self._update(stage="failed", error=str(err))
        except Exception as err:
            self._update(stage="failed", error=f"{type(err).__name__}: {err}")
            raise
        finally:
            if self._public:
                _PUBLIC_SWEEPS.release()

    def _stage(self, stage: str, n: int | None, n_boot: int) -> Sweep:
        self._update(stage=stage, done=0, total=0)

        def progress(done: int, total: int) -> None:
            if self._cancel.is_set():
                raise SweepCancelled
            self._update(done=done, total=total)

        return robustness_sweep(*self._args, n=n, n_boot=n_boot, progress=progress, **self._kwargs)

    def _update(self, **changes) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)


def summary_line(table: pd.DataFrame, family: str) -> str:
    """Which model degrades least and by how much: each model's largest drop from its unshifted
    AUC over the sweep (balanced accuracy where AUC is undefined; the share of flipped calls
    where both are, i.e. one class only), and its largest share of flipped calls."""
    defined = [m for m in ("auc", "balanced_accuracy") if table[m].notna().all()]
    if not defined:
        flips = table.groupby("model", sort=False)["flip_share"].max().sort_values(kind="stable")
        said = "; ".join(f"{name} ≤{share:.1%}" for name, share in flips.items())
        return f"Under {family} shift (one class only: no AUC), calls flip on: {said}."
    metric = defined[0]
    worst = {}
    for name, rows in table.groupby("model", sort=False):
        base = rows.loc[rows["strength"].isna(), metric].iloc[0]
        shifted = rows[rows["strength"].notna()]
        drops = base - shifted[metric]
        at = shifted.loc[drops.idxmax()]
        worst[name] = (float(drops.max()), float(base), at, float(shifted["flip_share"].max()))
    order = sorted(worst, key=lambda m: worst[m][0])
    label = "AUC" if metric == "auc" else "balanced accuracy"

    def said(name):
        drop, base, at, flips = worst[name]
        return (
            f"{name} {label} {base:.3f} → {at[metric]:.3f} (−{max(drop, 0):.3f} at "
            f"{at['strength']:g}), calls flip on ≤{flips:.1%}"
        )

    if len(order) == 1:
        return f"Under {family} shift: {said(order[0])}."
    best, rest = order[0], order[1:]
    gap = worst[rest[0]][0] - worst[best][0]
    return (
        f"Under {family} shift, {best} degrades least ({gap:.3f} {label} less than the next): "
        + "; ".join(said(name) for name in order)
        + "."
    )


@dataclass(frozen=True)
class PatchShift:
    """One patch before and after a stain shift, for each model: calibrated P(tumour), its call
    at the card's threshold, and each method's map with its stability (Spearman's ρ between the
    maps before and after; NaN when a map is flat)."""

    shift: StainShift
    untreated: bool  # the shift could not treat it (too little tissue): shown unchanged
    gallery: object  # core.explain.Gallery, rows = (original, shifted), columns = model × method
    probs: dict[str, tuple[float, float]]  # model -> P(tumour) before, after
    thresholds: dict[str, float]
    stability: dict[tuple[str, str], float]  # (model, method) -> Spearman ρ

    def calls(self, model: str) -> tuple[str, str]:
        from core.calls import called_class

        return tuple(called_class(p, self.thresholds[model]) for p in self.probs[model])


def patch_under_shift(
    models: dict,
    image: np.ndarray,
    patch_id: str,
    family: str,
    strength: float,
    methods: Sequence[str],
    target: str = "pred",
    seed: int = 0,
    reference_images: np.ndarray | None = None,
) -> PatchShift:
    """What one shift does to one patch (Explain's stain slider). ``models``: {name:
    LoadedModel}; maps and each model's calibrated P(tumour) come from
    ``core.explain.explain_gallery`` (compute_cams). The Reinhard family's reference stain is
    pooled over ``reference_images`` (the patches shown), else the patch."""
    from scipy.stats import spearmanr

    from core.explain import explain_gallery

    shift_family(family)
    reference = None
    if family == "reinhard":
        pool = image[None] if reference_images is None else reference_images
        target_stain = stain.fit_target("reinhard", pool)
        reference = (tuple(target_stain["means"]), tuple(target_stain["stds"]))
    shift = StainShift(family, float(strength), seed, reference)
    moved = shift.apply(image[None], [patch_id])
    pair = np.stack([image, moved.images[0]])
    gallery = explain_gallery(models, pair, ["original", "shifted"], list(methods), target)
    stability = {}
    for column in gallery.columns:
        before, after = (m.ravel() for m in column.result.cams)
        flat = before.std() == 0 or after.std() == 0
        stability[column.model, column.method] = (
            float("nan") if flat else float(spearmanr(before, after).statistic)
        )
    return PatchShift(
        shift=shift,
        untreated=bool(moved.untreated[0]),
        gallery=gallery,
        probs={c.model: tuple(map(float, c.result.probs)) for c in gallery.columns},
        thresholds={n: m.card.threshold for n, m in models.items()},
        stability=stability,
    )


# -- helpers, in call order ---------------------------------------------------------------------


def _reference_stain(ds, indices: np.ndarray, seed: int):
    """The data's own mean stain: a Reinhard target pooled over a seeded sample of the patches."""
    target = stain.fit_on_patches("reinhard", ds, indices, seed)
    return tuple(target["means"]), tuple(target["stds"])


def _load_once():
    """A ``loader`` for core.evaluate that loads each checkpoint once per sweep (not once per
    strength: 14 loads took 7 s of a 55 s preview on 2 busy cores)."""
    from core.checkpoints import load_checkpoint

    loaded = {}

    def load(path, device):
        key = (str(path), str(device))
        if key not in loaded:
            loaded[key] = load_checkpoint(path, device=device)
        return loaded[key]

    return load


def _counter(progress: Progress | None, total: int):
    """A progress(done, total) per prediction run, adding up to one bar over the sweep."""
    finished = [0]

    def one_run():
        if progress is None:
            return None
        offset = finished[0]

        def report(done, _total):
            finished[0] = offset + done
            progress(finished[0], total)

        return report

    return one_run


def _table(preds, names, shifts, thresholds, n_boot: int, seed: int) -> pd.DataFrame:
    from core.calls import predict_labels
    from core.evaluate import cached_auc_ci, labelled
    from core.metrics import binary_metrics, known_groups

    rows = []
    for shift in shifts:
        for name in names:
            frame, base = preds[name, shift], preds[name, None]
            known = labelled(frame)
            if known.empty:
                raise InputError(f"split has no labelled patches to score the {name} sweep on")
            y, prob, threshold = known["label"], known["prob"], thresholds[name]
            m = binary_metrics(y, prob, threshold)
            ci = cached_auc_ci(y, prob, groups=known_groups(known), n_boot=n_boot, seed=seed)
            flips = predict_labels(frame["prob"], threshold) != predict_labels(
                base["prob"], threshold
            )
            rows.append(
                {
                    "model": name,
                    "strength": np.nan if shift is None else shift.strength,
                    "n": m["n"],
                    "auc": m["auc"],
                    "auc_low": ci.low if ci else None,
                    "auc_high": ci.high if ci else None,
                    "balanced_accuracy": m["balanced_accuracy"],
                    "ece": m["ece"],
                    "flip_share": float(flips.mean()),
                    "untreated": int(frame["untreated"].sum()) if "untreated" in frame else 0,
                }
            )
    return pd.DataFrame(rows)


def _unit(frame: pd.DataFrame):
    """What the intervals and paired tests resample (``core.metrics.patch_or_patient``, as
    Compare decides it): patients where known and numerous enough, else patches with a note."""
    from core.evaluate import labelled
    from core.metrics import known_groups, patch_or_patient

    known = labelled(frame)
    return patch_or_patient(known["label"].to_numpy(), known_groups(known))


Z95 = 1.959964  # two-sided 95% normal quantile


def _paired(preds, names, shifts, unit) -> pd.DataFrame:
    """Per strength and model pair: the AUC difference a − b on the same patches, DeLong's
    (patients as the unit: Obuchowski's clustered) standard error, its 95% CI and p-value."""
    from core.evaluate import labelled
    from core.metrics import paired_delong

    rows = []
    for shift in shifts:
        for a, b in itertools.combinations(names, 2):
            known_a, known_b = labelled(preds[a, shift]), labelled(preds[b, shift])
            y = known_a["label"].to_numpy()
            if np.unique(y).size < 2:  # one class: no AUC, no test
                continue
            pa, pb = known_a["prob"].to_numpy(), known_b["prob"].to_numpy()
            test = paired_delong(y, pa, pb, unit.groups)
            diff, se = test["auc_diff"], test["se_diff"]
            rows.append(
                {
                    "strength": np.nan if shift is None else shift.strength,
                    "model_a": a,
                    "model_b": b,
                    "auc_diff": diff,
                    "low": diff - Z95 * se,
                    "high": diff + Z95 * se,
                    "p_value": test["p_value"],
                    "test": test["test"],
                    "unit": unit.name,
                }
            )
    columns = [
        "strength", "model_a", "model_b", "auc_diff", "low", "high", "p_value", "test", "unit"
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
