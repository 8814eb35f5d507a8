"""PCam-size reads: 64 random patches (the gallery / a batch) and full label counts.

    /work/venv/bin/python bench/data_pcam.py [--dir bench/out/pcam_full] [--trials 20]

Generates once a PCam-size train split (262,144 × 96×96×3 uint8, 7.25 GB, plus labels) in the
published layout. The x array is stored uncompressed and contiguous: the published
``camelyonpatch_level_2_split_train_x.h5`` (after gunzip) is ~7.2 GB for 7.25 GB of pixels, so it
holds them uncompressed too. Each trial first evicts this file from the page cache
(``posix_fadvise(DONTNEED)``, which touches only this file) so "cold" means read from disk;
"warm" repeats the same indices.

Compared in the same run:
  (1) ``PCamDataset.read_batch`` (loop of sorted single reads) vs h5py fancy indexing
      ``x[sorted_indices]``; time and RSS growth.
  (3) label counts via ``open_dataset`` + ``summarize`` (labels read once, pixels untouched)
      vs a per-item loop over ``y[i]`` (what counting through ``__getitem__`` costs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import open_dataset, summarize  # noqa: E402
from core.data.pcam import split_file  # noqa: E402

N = 262_144
SHAPE = (96, 96, 3)
BLOCK = 4096


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def generate(root: Path, n: int = N) -> None:
    x_path, y_path = split_file(root, "train", "x"), split_file(root, "train", "y")
    if x_path.exists() and y_path.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (BLOCK, *SHAPE), dtype=np.uint8)
    started = time.perf_counter()
    with h5py.File(y_path, "w") as f:
        f.create_dataset("y", data=rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8))
    tmp = x_path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        x = f.create_dataset("x", shape=(n, *SHAPE), dtype=np.uint8)  # contiguous, uncompressed
        for start in range(0, n, BLOCK):
            block[:, 0, 0, 0] = np.arange(start, start + BLOCK) % 256  # blocks differ
            x[start : start + BLOCK] = block
    os.replace(tmp, x_path)
    print(
        f"generated {x_path} ({x_path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s"
    )


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_batches(root: Path, trials: int) -> None:
    x_path = split_file(root, "train", "x")
    ds = open_dataset(root)
    rng = np.random.default_rng(1)
    fancy_file = h5py.File(x_path, "r")
    fancy_x = fancy_file["x"]
    ds.read_batch([0])  # open the lazy handle outside the timings
    results = {"read_batch": {"cold": [], "warm": []}, "fancy": {"cold": [], "warm": []}}
    rss = {"read_batch": 0.0, "fancy": 0.0}
    for _ in range(trials):
        indices = np.sort(rng.choice(N, 64, replace=False))
        for name, read in (
            ("read_batch", lambda indices=indices: ds.read_batch(indices)),
            ("fancy", lambda indices=indices: fancy_x[indices]),
        ):
            evict(x_path)
            before = rss_mb()
            results[name]["cold"].append(timed(read))
            rss[name] = max(rss[name], rss_mb() - before)
            results[name]["warm"].append(timed(read))
    np.testing.assert_array_equal(ds.read_batch(indices), fancy_x[indices])
    fancy_file.close()
    print(f"\n(1) 64 random patches from {N:,} × 96×96×3 (median of {trials} trials)")
    for name in results:
        cold = statistics.median(results[name]["cold"]) * 1000
        warm = statistics.median(results[name]["warm"]) * 1000
        print(
            f"  {name:<11} cold {cold:8.1f} ms   warm {warm:7.1f} ms   RSS growth {rss[name]:6.1f} MB"
        )
    ratio_cold = statistics.median(results["fancy"]["cold"]) / statistics.median(
        results["read_batch"]["cold"]
    )
    ratio_warm = statistics.median(results["fancy"]["warm"]) / statistics.median(
        results["read_batch"]["warm"]
    )
    print(f"  fancy / read_batch: cold {ratio_cold:.1f}×, warm {ratio_warm:.1f}×")
    print(f"  process RSS now {rss_mb():.0f} MB")


def bench_labels(root: Path) -> None:
    y_path = split_file(root, "train", "y")
    evict(y_path)
    counts = {}
    t_ours = timed(lambda: counts.update(summarize(open_dataset(root))["labels"]))
    evict(y_path)

    def per_item():
        with h5py.File(y_path, "r") as f:
            y = f["y"]
            total = np.zeros(2, np.int64)
            for i in range(N):
                total[int(y[i].ravel()[0])] += 1
            counts["loop"] = total.tolist()

    t_loop = timed(per_item)
    assert counts["loop"] == [counts["0"], counts["1"]]
    print(f"\n(3) label counts over {N:,} patches (cold cache)")
    print(
        f"  open_dataset + summarize {t_ours * 1000:8.1f} ms   counts {counts['0']}/{counts['1']}"
    )
    print(f"  per-item y[i] loop       {t_loop * 1000:8.1f} ms   ({t_loop / t_ours:.0f}× slower)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=str(Path(__file__).parent / "out" / "pcam_full"))
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    root = Path(args.dir)
    os.environ.setdefault("HISTOLENS_CACHE", str(root / ".cache"))
    generate(root)
    bench_batches(root, args.trials)
    bench_labels(root)


if __name__ == "__main__":
    main()
