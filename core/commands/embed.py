"""`python -m core embed --checkpoint CKPT --data PATH [--split test] [--method umap|pca]
[--seed 0] [--cap N] --out FILE.parquet`.

Writes one row per mapped patch: ``id, label, prob, x, y`` (+ ``patient`` where the dataset knows
it). Features, predictions and the map are cached (core.embed), so a second run is a file read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.embed import MAP_CAP, METHODS
from core.evaluate import SPLITS


def register(sub) -> None:
    p = sub.add_parser("embed", help="2-D embedding map of a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--data", required=True, help="dataset folder (pcam, hcd or idc layout)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--method", default="umap", choices=METHODS, help="umap, or pca (fast preview)")
    p.add_argument("--seed", type=int, default=0, help="seed of UMAP and of the sample above --cap")
    p.add_argument("--cap", type=int, default=MAP_CAP, help="map a seeded sample above this")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 32 on CPU")
    p.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    p.add_argument("--out", required=True, help="output .parquet")
    p.set_defaults(func=run)


def run(args) -> int:
    from core.commands.evaluate import open_data, tqdm_progress
    from core.embed import embedding_map, export_frame
    from core.errors import InputError
    from core.files import check_output, write_atomic

    if (args.batch_size is not None and args.batch_size < 1) or args.cap < 3:
        raise InputError("--batch-size must be 1 or more and --cap 3 or more")
    check_output(args.out, args.checkpoint)
    ds = open_data(args.data, [args.checkpoint])
    emap = embedding_map(
        args.checkpoint,
        ds,
        split=args.split,
        method=args.method,
        seed=args.seed,
        cap=args.cap,
        progress=tqdm_progress("features"),
        batch_size=args.batch_size,
        device=args.device,
    )
    if emap.note:
        print(f"note: {emap.note}", file=sys.stderr)
    table = export_frame(emap)
    write_atomic(Path(args.out), lambda fh: table.to_parquet(fh, index=False))
    print(f"{args.out}: {len(emap.frame)} patches mapped with {emap.method}")
    return 0
