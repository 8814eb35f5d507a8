"""The prediction/embedding cache key's look at the data files, at IDC scale, in one run.

    .venv/bin/python bench/data_fingerprint.py [--n 40000] [--models 4]

Writes ``--n`` tiny files in the IDC layout (``<patient>/<0|1>/<name>.png``, 200 per folder)
under a temp folder, then times on one dataset object (as a page holds it):
- the floor: one bare ``os.stat`` per file (what any exact key must pay: no directory stamp
  sees a write inside a file);
- ``data_fingerprint`` of all files (first call builds the sorted file list, later calls reuse it);
- a Compare rerun with ``--models`` checkpoints: fingerprints taken before (2 per model: one per
  ``predict_split``, one per page cache key) and now (1: ``evaluate_checkpoints`` takes it once,
  the page keys on the predictions' content).
Prints medians of 5 and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.base import PatchDataset  # noqa: E402


class Files(PatchDataset):
    """Just the file list of a dataset: what the fingerprint reads."""

    def __init__(self, paths: list[str]):
        self._paths = np.array(paths, dtype=object)

    def data_files(self, indices) -> list:
        return list(self._paths[indices])


def write_files(root: Path, n: int) -> list[str]:
    paths = []
    for k in range(n):
        folder = root / str(10000 + k // 200) / str(k % 2)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{10000 + k // 200}_idx5_x{k}_y0_class{k % 2}.png"
        path.write_bytes(b"\x89PNG" + bytes(96))
        paths.append(str(path))
    return paths


def median_s(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--models", type=int, default=4)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp), args.n)
        ds, everything = Files(paths), np.arange(args.n)
        start = time.perf_counter()
        ds.data_fingerprint(everything)
        first = time.perf_counter() - start
        floor = median_s(lambda: [os.stat(p) for p in paths])
        again = median_s(lambda: ds.data_fingerprint(everything))
    print(f"{args.n:,} files: bare stat loop {floor * 1e3:.0f} ms (floor)")
    print(
        f"data_fingerprint: first call {first * 1e3:.0f} ms, then {again * 1e3:.0f} ms "
        f"({again / floor:.2f}x the floor)"
    )
    before, now = 2 * args.models * again, again
    print(
        f"Compare rerun, {args.models} models: {2 * args.models} fingerprints before "
        f"(~{before * 1e3:.0f} ms), 1 now (~{now * 1e3:.0f} ms): {before / now:.0f}x fewer"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
