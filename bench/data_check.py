"""Throughput of `python -m core data check` against a bare decode loop, in one run.

    .venv/bin/python bench/data_check.py [--idc ../shared/data/real/idc]
        [--pcam-n 262144] [--hcd-n 8192] [--workers 2] [--sets idc,pcam,hcd]

Sets: the real IDC sample (7,583 PNGs; skipped when absent), a PCam-size train split (96×96 h5,
uncompressed and contiguous as the published file is after gunzip; bench/data_pcam.py's
generator, ``--pcam-n`` a multiple of 4096, written once under bench/out/) and a generated flat
HCD folder of 96×96 TIFFs (``--hcd-n``, bench/out/hcd_check/). Each set is read once, untimed,
so every figure is a warm page cache. Then, per set, in this order:

  bare       the plainest full read: PIL open + np.asarray(convert("RGB")) per file, or h5py
             ``x[i]`` per row (no checks, no reasons)
  check 1    ``check_dataset(workers=1)``: the readers' read_batch in chunks of 256
  check N    ``check_dataset(workers=N)``: N worker processes (forked: this process runs no
             other thread)
  threads N  the same chunks in a ThreadPoolExecutor of N threads: the alternative to
             processes, measured, not used

Printed: patches/s, the ratio to ``bare`` of the same set, and CPU seconds per 1,000 patches
(this process and its children); ``check`` includes opening the dataset (timed apart too).
The machine is shared (2 cores, other agents): ``uptime`` is printed before and after; compare
ratios within one run, not absolute figures across runs.

Threads or processes does not show on cores other agents keep busy, so for the image formats
the bench also measures what bounds threads anywhere: the share of a patch's read spent where
the GIL is released (reading the file's bytes; Pillow's ``load``, whose C decoder releases it,
timed whole, so an upper bound), and Amdahl's limit 1 / (1 - share) on any number of threads.
h5py holds one lock around every call, so an h5 read has no such share.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from data_pcam import generate as generate_pcam  # noqa: E402

from core.data import open_dataset  # noqa: E402
from core.data.base import read_regular_bytes  # noqa: E402
from core.data.check import CHUNK, _check_chunk, check_dataset  # noqa: E402
from core.data.pcam import split_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idc", default=str(BENCH.parent.parent / "shared/data/real/idc"))
    parser.add_argument("--pcam-n", type=int, default=262_144)
    parser.add_argument("--hcd-n", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sets", default="idc,pcam,hcd")
    args = parser.parse_args()
    os.environ.setdefault("HISTOLENS_CACHE", str(BENCH / "out" / "check_cache"))
    print("load before:", uptime())
    sets = {
        "idc": lambda: (Path(args.idc), bare_images(sorted(Path(args.idc).glob("*/*/*.png")))),
        "pcam": lambda: pcam_set(args.pcam_n),
        "hcd": lambda: hcd_set(args.hcd_n),
    }
    for name in args.sets.split(","):
        if name == "idc" and not Path(args.idc).is_dir():
            print(f"\nidc: {args.idc} absent, skipped")
            continue
        root, bare = sets[name]()
        compare(name, root, bare, args.workers)
    print("\nload after:", uptime())


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def compare(name: str, root: Path, bare, workers: int) -> None:
    open_dataset(root, exclusions=False)  # the first open indexes (IDC): not timed
    opening, _ = timed(lambda: open_dataset(root, exclusions=False))
    n = len(open_dataset(root, exclusions=False))
    bare()  # warm the page cache
    runs = {
        "bare": bare,
        "check 1": lambda: check_dataset(root, workers=1),
        f"check {workers}": lambda: check_dataset(root, workers=workers),
        f"threads {workers}": lambda: threaded_check(root, workers),
    }
    print(f"\n{name}: {n:,} patches, {root} (opening it: {opening:.2f} s)")
    baseline = None
    for label, run in runs.items():
        seconds, cpu = timed(run)
        baseline = baseline or seconds
        print(
            f"  {label:<10} {n / seconds:9,.0f} patches/s  {baseline / seconds:5.2f}× bare  "
            f"{cpu / n * 1000:6.2f} CPU s/1000"
        )
    if name != "pcam":
        share = gil_free_share(root)
        print(f"  GIL released for at most {share:.0%} of a read: threads ≤ {1 / (1 - share):.1f}×")


def gil_free_share(root: Path, n: int = 2000) -> float:
    """(file bytes read + Pillow's load) / the reader's whole read, over the first ``n``
    patches (see the module docstring)."""
    ds = open_dataset(root, exclusions=False)
    files = [ds.source(i) for i in range(min(n, len(ds)))]  # HCD, IDC: the file's path
    whole, _ = timed(lambda: [ds.read(i) for i in range(len(files))])
    released = 0.0
    for path in files:
        started = time.perf_counter()
        data = read_regular_bytes(path)
        read = time.perf_counter()
        image = Image.open(io.BytesIO(data))
        opened = time.perf_counter()
        image.load()
        released += (read - started) + (time.perf_counter() - opened)
    return released / whole


def timed(run) -> tuple[float, float]:
    before, started = os.times(), time.perf_counter()
    result = run()
    seconds, after = time.perf_counter() - started, os.times()
    if hasattr(result, "unreadable"):
        assert result.clean, result.unreadable[:3]  # generated and sample sets read cleanly
    cpu = sum(after[:4]) - sum(before[:4])  # user + system, this process and its children
    return seconds, cpu


def threaded_check(root: Path, workers: int) -> None:
    ds = open_dataset(root, exclusions=False)
    chunks = [np.arange(s, min(s + CHUNK, len(ds))) for s in range(0, len(ds), CHUNK)]
    with ThreadPoolExecutor(workers) as pool:
        failures = sum(pool.map(lambda chunk: _check_chunk(ds, chunk), chunks), [])
    assert not failures, failures[:3]


def bare_images(paths: list[Path]):
    def read_all() -> None:
        for path in paths:
            with Image.open(path) as image:
                np.asarray(image.convert("RGB"))

    return read_all


def pcam_set(n: int) -> tuple[Path, object]:
    import h5py

    root = BENCH / "out" / ("pcam_full" if n == 262_144 else f"pcam_{n}")
    generate_pcam(root, n)

    def read_all() -> None:
        with h5py.File(split_file(root, "train", "x"), "r") as f:
            x = f["x"]
            for i in range(len(x)):
                x[i]

    return root, read_all


def hcd_set(n: int) -> tuple[Path, object]:
    root = BENCH / "out" / "hcd_check"
    paths = [root / f"{k:08x}.tif" for k in range(n)]
    if not (root / "labels.csv").exists() or not all(p.exists() for p in paths):
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for path in paths:
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(path)
        rows = "".join(f"{p.stem},{k % 2}\n" for k, p in enumerate(paths))
        (root / "labels.csv").write_text("id,label\n" + rows)
    return root, bare_images(paths)


if __name__ == "__main__":
    main()
