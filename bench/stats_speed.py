"""Statistics at the speed of a cache hit (issue 27, item 6), measured against the old way in
the same run.

    /work/main/.venv/bin/python bench/stats_speed.py [--dir bench/out/stats] [--baseline-repo ../main]
        [--only bootstrap|compare]

1. The AUC bootstrap on a PCam-size test split (32,768 patches, 1,000 resamples): the old way
   (scikit-learn's ``roc_auc_score`` on each resample's patches) against ``Resampler.aucs``
   (one sort, cumulative sums of each patch's weight) on the very same resamples, by patch and
   by patient; it prints both times, their ratio and the largest difference of any resample's
   AUC and of the interval's ends.
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
import resource
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
    parser.add_argument("--only", choices=("bootstrap", "compare"), help="run one part")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    if args.only != "compare":
        bootstrap_against_sklearn()
    if args.only != "bootstrap":
        cached_compare(args.dir, args.baseline_repo)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def synthetic_split(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(N_TEST) < 0.5).astype(int)
    score = 1.4 * y - 0.7 + rng.normal(0, 1, N_TEST)
    prob = np.round(1 / (1 + np.exp(-score)), 6)  # float32-like resolution: some ties
    return y, prob


def bootstrap_against_sklearn() -> None:
    """Both ways on the very same resamples, block by block, so that a change of load on this
    shared machine hits both alike: each block of resamples is drawn (counted on both sides),
    its AUCs computed the new way (``Resampler.aucs``) and then the old way (each resample's
    patches to ``roc_auc_score``). Wall-clock and CPU time (this process's, which other agents'
    jobs do not inflate) are both printed."""
    from sklearn.metrics import roc_auc_score

    from core import metrics

    y, prob = synthetic_split()
    for unit, groups in (("patch", None), ("patient", np.arange(N_TEST) // 128)):
        resampler = metrics.Resampler.of(y, prob, groups)
        blocks = resampler.draws(N_BOOT, seed=0)
        draws, new_way, old_way = Clock(), Clock(), Clock()
        new, old = [], []
        while (block := draws.run(next, blocks, None)) is not None:
            new.append(new_way.run(resampler.aucs, block))
            for row in range(len(block[0])):
                drawn = old_way.run(resampler.patch_indices, block, row)
                old.append(old_way.run(roc_auc_score, y[drawn], prob[drawn]))
        new, old = np.concatenate(new), np.array(old)
        ends_old, ends_new = np.percentile(old, [2.5, 97.5]), np.percentile(new, [2.5, 97.5])
        old_way.add(draws)
        new_way.add(draws)
        print(
            f"bootstrap by {unit}, {N_TEST:,} patches, {N_BOOT:,} resamples: old (draws + "
            f"roc_auc_score per resample) {old_way}, new (draws + one-sort AUCs) {new_way} "
            f"(draws {draws}): {old_way.wall / new_way.wall:.1f}× faster wall-clock, "
            f"{old_way.cpu / new_way.cpu:.1f}× in CPU time; "
            f"max |AUC diff| {np.max(np.abs(old - new)):.1e}, "
            f"interval ends diff {np.max(np.abs(ends_old - ends_new)):.1e}",
            flush=True,
        )


class Clock:
    """Wall-clock and CPU seconds spent in the calls it ran."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def run(self, function, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return result

    def add(self, other: Clock) -> None:
        self.wall += other.wall
        self.cpu += other.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s (CPU {self.cpu:.2f} s)"


def cached_compare(folder: Path, baseline: Path | None) -> None:
    """``python -m core compare`` end to end, wall-clock and CPU time (user + system of the
    child: what it takes on an idle machine, since it runs on one core), beside the floor of
    starting Python and importing the libraries it needs, measured in the same run."""
    data = folder / "pcam"
    env = {**os.environ, "HISTOLENS_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1"}
    os.environ.update(HISTOLENS_CACHE=env["HISTOLENS_CACHE"])
    write_pcam(data)
    seed_predictions(data)
    compare = [
        "-m",
        "core",
        "compare",
        "--checkpoints",
        *map(str, CHECKPOINTS),
        "--data",
        str(data),
    ]
    runs = [
        (
            "import floor: python -c 'import pandas, sklearn.metrics, pyarrow.parquet'",
            IMPORTS,
            ROOT,
        ),
        (f"cached compare of 2 models on {N_TEST:,} patches, intervals computed", compare, ROOT),
        (f"cached compare of 2 models on {N_TEST:,} patches, intervals cached", compare, ROOT),
    ]
    if baseline is not None:
        runs.append((f"the same with the baseline code ({baseline})", compare, baseline.resolve()))
    for label, arguments, repo in runs:
        if label.endswith("computed"):
            for stale in (folder / "cache" / "predictions" / "intervals").glob("*.json"):
                stale.unlink()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *arguments], cwd=repo, env=env, capture_output=True, text=True
        )
        took = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        status = "ok" if done.returncode == 0 else f"failed: {done.stderr.strip()[-300:]}"
        print(
            f"{label}: {took:.1f} s wall, CPU {cpu:.1f} s, load {os.getloadavg()[0]:.1f} ({status})",
            flush=True,
        )


IMPORTS = ["-c", "import pandas, sklearn.metrics, pyarrow.parquet"]


def write_pcam(root: Path) -> None:
    """A PCam-layout set: 32,768 test patches, tiny train/valid. Only the first 64 images are
    written (random pixels: incompressible, so the file is big enough for the reader's check
    against forged sizes); the rest are unwritten chunks, which read as zeros. Pixels are not
    read when every prediction is cached."""
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
