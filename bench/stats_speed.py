"""Statistics at the speed of a cache hit (issue 27, item 6), measured against the old way in
the same run.

    /work/main/.venv/bin/python bench/stats_speed.py [--dir bench/out/stats] [--baseline-repo ../main]

1. The AUC bootstrap on a PCam-size test split (32,768 patches, 1,000 resamples): the old way
   (scikit-learn's ``roc_auc_score`` on each resample's patches) against ``Resampler.aucs``
   (one sort, counts per tied group) on the very same resamples; it prints both times, their
   ratio and the largest difference of any resample's AUC and of the interval's ends.
2. ``python -m core compare`` of the two demo checkpoints on a PCam-layout set of that size
   whose predictions are all in the cache (written here: pixels are not read when predictions
   are cached, so the bench does not spend minutes on inference): the first run computes the
   intervals and caches them, the second reads them. With ``--baseline-repo`` (a checkout of
   the code before this change) the same command runs there too, on the same cache.
Times are wall-clock on this machine; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_TEST = 32_768
N_BOOT = 1000
CHECKPOINTS = [ROOT / "checkpoints" / f"demo_pcam_{m}.pt" for m in ("hcd_cnn", "idc_cnn")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / "out" / "stats")
    parser.add_argument("--baseline-repo", type=Path, default=None)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    bootstrap_against_sklearn()
    cached_compare(args.dir, args.baseline_repo)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def synthetic_split(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(N_TEST) < 0.5).astype(int)
    score = 1.4 * y - 0.7 + rng.normal(0, 1, N_TEST)
    prob = np.round(1 / (1 + np.exp(-score)), 6)  # float32-like resolution: some ties
    return y, prob


def bootstrap_against_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from core import metrics

    y, prob = synthetic_split()
    for unit, groups in (("patch", None), ("patient", np.arange(N_TEST) // 128)):
        resampler = metrics.Resampler.of(y, prob, groups)
        started = time.perf_counter()
        new = np.concatenate([resampler.aucs(b) for b in resampler.draws(N_BOOT, seed=0)])
        t_new = time.perf_counter() - started
        started = time.perf_counter()  # the old way, drawing the same resamples included
        old = [
            roc_auc_score(y[drawn], prob[drawn])
            for block in resampler.draws(N_BOOT, seed=0)
            for drawn in (resampler.patch_indices(block, r) for r in range(len(block[0])))
        ]
        t_old = time.perf_counter() - started
        t_draws = _time(lambda r=resampler: list(r.draws(N_BOOT, seed=0)))
        ends_old, ends_new = np.percentile(old, [2.5, 97.5]), np.percentile(new, [2.5, 97.5])
        print(
            f"bootstrap by {unit}, {N_TEST:,} patches, {N_BOOT:,} resamples: "
            f"draws + roc_auc_score per resample {t_old:.2f} s, draws {t_draws:.2f} s + "
            f"one-sort AUCs {t_new:.2f} s: {t_old / (t_new + t_draws):.1f}× "
            f"(AUCs alone {(t_old - t_draws) / t_new:.1f}×); "
            f"max |AUC diff| {np.max(np.abs(np.array(old) - new)):.1e}, "
            f"interval ends diff {np.max(np.abs(ends_old - ends_new)):.1e}"
        )


def _time(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def cached_compare(folder: Path, baseline: Path | None) -> None:
    data = folder / "pcam"
    env = {**os.environ, "HISTOLENS_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1"}
    os.environ.update(HISTOLENS_CACHE=env["HISTOLENS_CACHE"])
    write_pcam(data)
    seed_predictions(data)
    command = [
        "-m",
        "core",
        "compare",
        "--checkpoints",
        *map(str, CHECKPOINTS),
        "--data",
        str(data),
    ]
    runs = [("this code, intervals computed", ROOT), ("this code, intervals cached", ROOT)]
    if baseline is not None:
        runs.append(("baseline code", baseline.resolve()))
    for label, repo in runs:
        if label.endswith("computed"):
            for stale in (folder / "cache" / "predictions" / "intervals").glob("*.json"):
                stale.unlink()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *command], cwd=repo, env=env, capture_output=True, text=True
        )
        took = time.perf_counter() - started
        status = "ok" if done.returncode == 0 else f"failed: {done.stderr.strip()[-300:]}"
        print(f"cached compare, {N_TEST:,} patches, 2 models, {label}: {took:.1f} s ({status})")


def write_pcam(root: Path) -> None:
    """A PCam-layout set: 32,768 test patches (blank pixels but the first 64, gzip: a few MB,
    enough for the reader's check against forged sizes), tiny train/valid."""
    import h5py

    from core.data.pcam import split_file

    if split_file(root, "test", "y").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    y, _ = synthetic_split()
    for split, n in (("train", 16), ("valid", 16), ("test", N_TEST)):
        with h5py.File(split_file(root, split, "x"), "w") as f:
            x = f.create_dataset(
                "x",
                shape=(n, 96, 96, 3),
                dtype="u1",
                chunks=(min(n, 64), 96, 96, 3),
                compression="gzip",
            )
            x[:] = 0
            x[: min(n, 64)] = np.random.default_rng(0).integers(0, 256, (min(n, 64), 96, 96, 3))
        labels = y if split == "test" else np.arange(n) % 2
        with h5py.File(split_file(root, split, "y"), "w") as f:
            f.create_dataset("y", data=labels.astype("u1").reshape(-1, 1, 1, 1))


def seed_predictions(root: Path) -> None:
    """Each checkpoint's predictions on the test split in the cache, as predict_split keys them
    (CPU, fp32): two correlated synthetic models."""
    from core.data import open_dataset
    from core.evaluate import prediction_cache_path, prediction_frame, split_indices, store_cached

    ds = open_dataset(str(root))
    indices = split_indices(ds, "test")
    y, prob = synthetic_split()
    rng = np.random.default_rng(1)
    other = np.clip(prob + rng.normal(0, 0.1, prob.size), 0, 1)
    for checkpoint, probs in zip(CHECKPOINTS, (prob, other), strict=True):
        store_cached(
            prediction_frame(ds, indices, probs),
            prediction_cache_path(checkpoint, ds, "test", False, "cpu", "fp32"),
        )


if __name__ == "__main__":
    main()
