"""IDC index build over a generated full-size tree (277,524 files, 279 patients).

    /work/venv/bin/python bench/data_idc_index.py [--dir bench/out/idc_277k] [--baseline-files 30000]

The tree is generated once in the native layout ``<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_
class<C>.png`` with the real totals (198,738 class 0, 78,786 class 1). Every file is a hard link
to a tiny 50×50 PNG (one per folder): the index reads only names and a 24-byte header, so file contents don't
matter, and links make the tree quick to build and cheap on disk.

Compared in the same run (warm directory cache; dropping it needs root for the whole machine):
  ours      ``core.data.idc.load_index``: os.scandir + PNG header read, then parquet cache.
  cached    the second ``open_dataset`` (parquet keyed by directory mtimes).
  baseline  glob per folder + ``PIL.Image.open(path).size`` per file (the obvious version),
            timed on the first ``--baseline-files`` files and extrapolated linearly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import open_dataset, summarize  # noqa: E402
from core.data.idc import load_index  # noqa: E402

PATIENTS = 279
NEGATIVE, POSITIVE = 198_738, 78_786


def generate(root: Path) -> None:
    marker = root / ".complete"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    png = root / "template.png"
    Image.fromarray(np.full((50, 50, 3), 200, np.uint8)).save(png)
    started = time.perf_counter()
    for label, total in ((0, NEGATIVE), (1, POSITIVE)):
        per_patient = np.array_split(np.arange(total), PATIENTS)
        for p, block in enumerate(per_patient):
            patient = str(8000 + p)
            folder = root / patient / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            template = root / patient / f"template{label}.png"  # ext4 caps links per inode
            shutil.copy(png, template)
            for k in range(len(block)):
                x, y = 1 + 50 * (k % 60), 1 + 50 * (k // 60) + 5000 * label
                os.link(template, folder / f"{patient}_idx5_x{x}_y{y}_class{label}.png")
    for template in root.glob("*/template*.png"):
        template.unlink()
    png.unlink()
    marker.touch()
    print(f"generated {NEGATIVE + POSITIVE:,} files in {time.perf_counter() - started:.0f} s")


def baseline_rate(root: Path, limit: int) -> tuple[float, int]:
    """Seconds per file for glob-per-folder + PIL size, over the first ``limit`` files."""
    started, seen = time.perf_counter(), 0
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        for label in ("0", "1"):
            for path in sorted((patient / label).glob("*.png")):
                with Image.open(path) as image:
                    image.size  # noqa: B018 (the header parse is the cost being measured)
                seen += 1
                if seen >= limit:
                    return (time.perf_counter() - started) / seen, seen
    return (time.perf_counter() - started) / max(seen, 1), seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=str(Path(__file__).parent / "out" / "idc_277k"))
    parser.add_argument("--baseline-files", type=int, default=30_000)
    args = parser.parse_args()
    root = Path(args.dir)
    generate(root)
    n = NEGATIVE + POSITIVE
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HISTOLENS_CACHE"] = cache
        started = time.perf_counter()
        table, _ = load_index(root)
        t_build = time.perf_counter() - started
        started = time.perf_counter()
        ds = open_dataset(root)
        t_open_cached = time.perf_counter() - started
        started = time.perf_counter()
        summary = summarize(ds)
        t_summary = time.perf_counter() - started
    assert len(table) == n and summary["n"] == n and summary["patients"] == PATIENTS
    per_file, measured = baseline_rate(root, args.baseline_files)
    print(f"IDC index over {n:,} files, {PATIENTS} patients (2 cores, warm dentry cache)")
    print(f"  ours: scandir + header, build      {t_build:7.2f} s  ({n / t_build:,.0f} files/s)")
    print(f"  ours: open_dataset from parquet    {t_open_cached:7.2f} s  (incl. patient split)")
    print(f"  summarize                          {t_summary:7.2f} s")
    print(
        f"  baseline glob + PIL size           {per_file * n:7.2f} s  (extrapolated from "
        f"{measured:,} files, {1 / per_file:,.0f} files/s)"
    )
    print(
        f"  baseline / ours build: {per_file * n / t_build:.1f}×;  "
        f"baseline / cached open: {per_file * n / t_open_cached:.0f}×"
    )


if __name__ == "__main__":
    main()
