"""`python -m core data summary PATH [--json]`: detect a dataset's format and print its counts."""

from __future__ import annotations

import json


def _print_text(summary: dict) -> None:
    size = "×".join(map(str, summary["image_size"]))
    synthetic = " (synthetic)" if summary["synthetic"] else ""
    print(f"format: {summary['format']}{synthetic}   patches: {summary['n']}   size: {size}")
    print(f"labels: normal {summary['labels']['0']}, tumour {summary['labels']['1']}")
    for split, counts in summary["splits"].items():
        print(
            f"  {split:<10} {counts['n']:>8}  (0: {counts['labels']['0']}, 1: {counts['labels']['1']})"
        )
    if summary["patients"] is not None:
        print(f"patients/slides: {summary['patients']}")
    if summary["edge_patches"]:
        print(f"edge patches smaller than {size}: {summary['edge_patches']} (kept, padded white)")
    print(f"split manifest: {summary['manifest_id']}")
    for note in summary["notes"]:
        print(f"note: {note}")
    for problem in summary["problems"]:
        print(f"problem: {problem}")


def summary_command(args) -> int:
    from core.data import open_dataset, summarize

    ds = open_dataset(args.path, seed=args.seed)
    if args.json:
        print(json.dumps(summarize(ds)))
    else:
        _print_text(summarize(ds, details=True))
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect datasets")
    actions = p.add_subparsers(dest="action", required=True)
    summary = actions.add_parser("summary", help="detect the format of PATH and print counts")
    summary.add_argument("path")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.add_argument(
        "--split-seed",
        "--seed",
        dest="seed",
        type=int,
        default=0,
        help="split seed (HCD, IDC), as `train --split-seed` (default 0)",
    )
    summary.set_defaults(func=summary_command)
