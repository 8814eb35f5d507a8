"""Stain robustness sweep: 512 patches × 6 strengths × 2 demo checkpoints vs plain inference of
the same patches, one run.

    .venv/bin/python bench/robustness.py [--n 512] [--shifts hed macenko reinhard] [--rounds 2]
    .venv/bin/python bench/robustness.py --per-patch CKPT --data PATH [--split valid] [--n 512]

1. The PCam-layout test split of ``bench/eval_throughput.py`` (``--n`` patches tiled from the
   synthetic demo, one gzip chunk per patch) and the two shipped demo checkpoints.
2. Baseline: plain inference of the ``--n`` patches with each checkpoint
   (``core.evaluate.predict_indices``, no cache) = B. A sweep predicts them 7 times (unshifted +
   6 strengths), so 7·B is its floor; the ratio sweep / 7·B is what shifting and statistics add.
3. The page's preview: ``robustness_sweep`` on 64 patches without CIs, cold cache (target ~5 s).
4. Per shift family, cold cache: the whole sweep with 1,000 patient-resampled bootstrap CIs
   (target ≤ 180 s), then the same sweep warm (predictions and intervals cached), between two
   plain passes of the 512 patches (the floor, 7 passes, is their mean × 7).
5. Per patch: each shift, and stain normalisation towards a target fitted on the patches
   (Macenko, Reinhard) alone and inside inference (the same checkpoint with the target in its
   card, as `train --stain-norm` writes it), against plain inference per patch (target:
   normalisation adds ≤ 20 %). With ``--per-patch CKPT --data PATH`` only this step, on ``--n``
   patches of that dataset's split with that checkpoint (e.g. the 50 px default recipe on real
   IDC patches, where inference per patch is cheaper than the demo's 96 px).

Prints wall seconds with the load average before and after; a shared 2-core machine stretches
wall time, so read the ratios (both sides measured in this run, alternating where it matters).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval_throughput import OUT, write_bench_pcam  # noqa: E402 (bench/ is on sys.path)

CHECKPOINTS = ("demo_pcam_hcd_cnn.pt", "demo_pcam_idc_cnn.pt")
TARGET_SWEEP_S = 180.0
TARGET_NORMALISATION = 0.20


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def fresh_cache() -> None:
    os.environ["HISTOLENS_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=OUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--shifts", nargs="+", default=["hed", "macenko", "reinhard"])
    parser.add_argument("--rounds", type=int, default=2, help="baseline/per-patch repetitions")
    parser.add_argument("--per-patch", metavar="CKPT", help="only step 5, with this checkpoint")
    parser.add_argument("--data", help="the dataset of --per-patch")
    parser.add_argument("--split", default="valid", help="the split of --per-patch")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"before: {load()}")
    if args.per_patch:
        per_patch_only(args)
        print(f"after: {load()}")
        return

    from core import stain
    from core.config import REPO_ROOT
    from core.data import open_dataset
    from core.data.splits import sample_indices
    from core.evaluate import predict_indices, split_indices
    from core.robustness import PREVIEW_PATCHES, SHIFTS, robustness_sweep

    ds = open_dataset(write_bench_pcam(OUT / f"pcam_robustness_{args.n}", args.n))
    checkpoints = [str(REPO_ROOT / "checkpoints" / name) for name in CHECKPOINTS]
    indices = split_indices(ds, "test")
    print(f"data: {len(indices)} PCam-layout patches; checkpoints: {', '.join(CHECKPOINTS)}")

    # warm-up: imports (scipy.stats, scikit-learn: an open page has them), the first h5 pages
    fresh_cache()
    robustness_sweep(checkpoints, ds, "test", "hed", (0.1,), n=16, n_boot=10, device="cpu")

    def plain(patches) -> float:
        """Plain inference of ``patches`` with both checkpoints: one pass of a sweep."""
        return sum(timed(predict_indices, c, ds, patches, device="cpu")[0] for c in checkpoints)

    # The floor of a sweep is 7 plain passes (unshifted + 6 strengths), measured just before
    # and just after it (the load moves by minutes): sweep / floor is what it adds.
    preview_patches = sample_indices(indices, PREVIEW_PATCHES)
    before = plain(preview_patches)
    fresh_cache()
    preview, _ = timed(
        robustness_sweep, checkpoints, ds, "test", "hed", n=PREVIEW_PATCHES, n_boot=0, device="cpu"
    )
    floor = 7 * (before + plain(preview_patches)) / 2
    print(
        f"preview ({PREVIEW_PATCHES} patches, 6 HED strengths × 2 checkpoints, no CIs, cold): "
        f"{preview:.1f} s (target ~5 s); its floor, 7 plain passes: {floor:.1f} s "
        f"({preview / floor:.2f}×)"
    )

    for family in args.shifts:
        before = plain(indices)
        fresh_cache()
        cold, sweep = timed(robustness_sweep, checkpoints, ds, "test", family, device="cpu")
        warm, _ = timed(robustness_sweep, checkpoints, ds, "test", family, device="cpu")
        after = plain(indices)
        floor = 7 * (before + after) / 2
        print(
            f"{family:8} sweep {len(indices)} × {len(SHIFTS[family].strengths)} strengths × 2: "
            f"cold {cold:.1f} s (target ≤ {TARGET_SWEEP_S:.0f}); floor 7 plain passes "
            f"{floor:.1f} s ({len(indices) * 2 / (floor / 7):.0f} predictions/s) -> "
            f"{cold / floor:.2f}×; warm rerun (predictions and intervals cached) {warm:.1f} s; "
            f"untreated {int(sweep.table['untreated'].max())}"
        )
        print(f"         {sweep.summary}")

    per_patch(args, ds, indices, checkpoints, stain, predict_indices)
    print(f"after: {load()}")


def per_patch(args, ds, indices, checkpoints, stain, predict_indices) -> None:
    """Each shift and each normalisation per patch against inference per patch, alternated."""
    from core.robustness import StainShift

    images = ds.read_batch(indices)
    ids = ds.meta["id"].to_numpy()[indices]
    targets = {m: stain.fit_target(m, images) for m in stain.STAIN_METHODS}
    reinhard = (tuple(targets["reinhard"]["means"]), tuple(targets["reinhard"]["stds"]))
    normalising = {m: carded_copy(checkpoints[0], t) for m, t in targets.items()}
    work = {
        "inference (one checkpoint)": lambda: predict_indices(
            checkpoints[0], ds, indices, device="cpu"
        ),
        **{
            f"inference, {m} card": (lambda c=c: predict_indices(c, ds, indices, device="cpu"))
            for m, c in normalising.items()
        },
        **{f"normalise {m}": (lambda t=t: stain.normalise(images, t)) for m, t in targets.items()},
        "shift hed 0.3": lambda: StainShift("hed", 0.3).apply(images, ids),
        "shift macenko 0.3": lambda: StainShift("macenko", 0.3).apply(images, ids),
        "shift reinhard +10": lambda: StainShift("reinhard", 10, 0, reinhard).apply(images, ids),
    }
    best = dict.fromkeys(work, float("inf"))
    for _ in range(args.rounds):
        for name, fn in work.items():
            best[name] = min(best[name], timed(fn)[0])
    inference = best["inference (one checkpoint)"] / len(indices)
    for name, seconds in best.items():
        each = seconds / len(indices)
        target = ""
        if name.startswith("normalise"):
            target = f" (target ≤ {TARGET_NORMALISATION:.0%})"
        elif name.endswith("card"):
            target = f" (target ≤ {1 + TARGET_NORMALISATION:.0%})"
        print(
            f"per patch: {name:28} {each * 1e3:6.2f} ms = {each / inference:6.1%} of inference{target}"
        )


def per_patch_only(args) -> None:
    from core import stain
    from core.data import open_dataset
    from core.data.splits import sample_indices
    from core.evaluate import predict_indices, split_indices

    if not args.data:
        sys.exit("--per-patch needs --data")
    ds = open_dataset(args.data)
    indices = sample_indices(split_indices(ds, args.split), args.n)
    print(
        f"data: {len(indices)} patches of {args.data} ({args.split}); checkpoint {args.per_patch}"
    )
    fresh_cache()
    predict_indices(args.per_patch, ds, indices[:16], device="cpu")  # warm-up
    per_patch(args, ds, indices, [args.per_patch], stain, predict_indices)


def carded_copy(checkpoint: str, target: dict) -> str:
    """The same weights with ``target`` in the card (what `train --stain-norm` writes)."""
    from dataclasses import replace

    from core.checkpoints import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(checkpoint)
    out = OUT / f"{Path(checkpoint).stem}-{target['method']}.pt"
    return str(save_checkpoint(out, loaded.model, replace(loaded.card, stain_norm=target)))


if __name__ == "__main__":
    main()
