"""Embedding maps at PCam scale: features + UMAP end to end vs PCA on the same features, one run.

    .venv/bin/python bench/embed.py [--n 32768] [--model hcd_cnn] [--batch-size 128]

1. The PCam-layout test split of ``bench/eval_throughput.py`` (``--n`` patches tiled from the
   synthetic demo, one gzip chunk per patch), under ``bench/out/pcam_bench``; reused if there.
2. A cold cache: ``core.embed.split_features`` (one forward pass: P(tumour) + the head's input),
   then ``embedding_map`` with UMAP (its ``import umap`` timed apart: numba compiles) and with PCA
   on the same cached features. End to end = features + map; target ≤ 180 s for UMAP.
3. On the cached maps, what the page does per interaction: read both maps from disk, recolour
   (every colouring) + build the WebGL figure + serialise it as Streamlit does; and a selection
   (a box over ~5 % of the points -> rows -> CSV). Target ≤ 1 s each.

Prints wall and CPU seconds (CPU time is the steadier figure on a shared machine) with the load
average before and after, and the ratios UMAP / PCA. The model is the shipped demo checkpoint
when it matches ``--model`` (real clusters), else random weights of ``--model``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval_throughput import OUT, Clock, write_bench_pcam  # noqa: E402 (bench/ is on sys.path)

TARGET_END_TO_END_S = 180.0
TARGET_INTERACTION_S = 1.0


def bench_checkpoint(model: str) -> Path:
    """The demo checkpoint of ``model`` if shipped, else random weights, copied under OUT."""
    import torch

    from core.checkpoints import ModelCard, save_checkpoint
    from core.config import REPO_ROOT
    from core.models import build_model

    shipped = REPO_ROOT / "checkpoints" / f"demo_pcam_{model}.pt"
    target = OUT / f"embed_{model}.pt"
    if shipped.exists():
        shutil.copyfile(shipped, target)
        return target
    torch.manual_seed(0)
    return save_checkpoint(target, build_model(model)[0], ModelCard.for_model(model))


def interaction(method: str, thresholds, ckpt, ds) -> tuple[float, list[float], float]:
    """Seconds of what the page does on a cached map: (reload it from disk, each recolour with
    its WebGL figure serialised as Streamlit sends it, a box selection -> rows -> CSV)."""
    from core.embed import (
        colour_options,
        colourings,
        embedding_map,
        rows_from_selection,
        selection_table,
    )
    from core.figures import embedding_figure

    with Clock() as reload:
        emap = embedding_map(ckpt, ds, "test", method)  # from the disk caches
    recolours = []
    has_patients = "patient" in emap.frame
    for by in colour_options(1, has_patients):
        with Clock() as clock:
            colouring = colourings({"m": emap}, by, thresholds)["m"]
            embedding_figure(emap, colouring, by).to_json()
        recolours.append(clock.wall)
    with Clock() as select:
        frame = emap.frame
        x0, x1 = np.quantile(frame["x"], [0.4, 0.6])
        y0, y1 = np.quantile(frame["y"], [0.4, 0.6])
        inside = frame["x"].between(x0, x1) & frame["y"].between(y0, y1)
        points = [{"customdata": int(r)} for r in np.flatnonzero(inside.to_numpy())]
        selection_table({"m": emap}, rows_from_selection(points), thresholds).to_csv(index=False)
    return reload.wall, recolours, select.wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--model", default="hcd_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["HISTOLENS_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=OUT)  # cold cache

    import torch

    from core.data import open_dataset
    from core.embed import embedding_map, split_features

    load_before = os.getloadavg()
    ds = open_dataset(write_bench_pcam(OUT / "pcam_bench", args.n))
    ckpt = bench_checkpoint(args.model)
    print(
        f"{len(ds)} PCam-layout patches, {args.model} ({ckpt.name}), batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores"
    )
    with Clock() as features:
        frame, feats = split_features(ckpt, ds, "test", batch_size=args.batch_size, device="cpu")
    print(f"features {feats.shape[1]}-d: {features.wall:.1f} s wall, {features.cpu:.1f} s CPU")
    with Clock() as umap_import:
        import umap  # noqa: F401  (numba compiles here; timed apart)
    maps = {}
    clocks = {}
    for method in ("umap", "pca"):
        with Clock() as clock:
            maps[method] = embedding_map(ckpt, ds, "test", method)
        clocks[method] = clock
    for method, clock in clocks.items():
        total_wall = features.wall + clock.wall + (umap_import.wall if method == "umap" else 0)
        total_cpu = features.cpu + clock.cpu + (umap_import.cpu if method == "umap" else 0)
        extra = f" (+ import umap {umap_import.wall:.1f} s)" if method == "umap" else ""
        print(
            f"{method:4} map of {len(maps[method].frame):,}: {clock.wall:6.1f} s wall, "
            f"{clock.cpu:6.1f} s CPU{extra} | end to end {total_wall:6.1f} s wall, "
            f"{total_cpu:6.1f} s CPU (target <= {TARGET_END_TO_END_S:.0f} s)"
            + (f" | note: {maps[method].note}" if maps[method].note else "")
        )
    print(
        f"ratio UMAP / PCA: map {clocks['umap'].wall / clocks['pca'].wall:.0f}x wall, "
        f"{clocks['umap'].cpu / max(clocks['pca'].cpu, 1e-9):.0f}x CPU"
    )
    thresholds = {"m": 0.5}
    for method in ("umap", "pca"):
        reload, recolours, select = interaction(method, thresholds, ckpt, ds)
        print(
            f"{method:4} cached map: reload {reload:.2f} s; recolour + figure "
            f"max {max(recolours):.2f} s, median {np.median(recolours):.2f} s over "
            f"{len(recolours)} colourings; selection -> CSV {select:.2f} s "
            f"(target <= {TARGET_INTERACTION_S:.0f} s each)"
        )
    print(
        f"load average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    assert len(frame) == args.n


if __name__ == "__main__":
    main()
