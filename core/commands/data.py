"""`python -m core data summary PATH [--json]`: detect a dataset's format and print its counts.
`python -m core data check PATH [--workers N] [--json] [--exclude]`: read every patch first.

Exit codes of `data check`: 0 every patch reads (or, with --exclude, the unreadable ones are now
excluded), 1 unreadable patches found and left in, 2 bad input (not a dataset, bad option).
"""

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
    if summary["excluded"]:
        print(
            f"excluded: {patches(summary['excluded'])}, unreadable when checked (list: "
            f"{summary['exclusions']}); each comes back once its file is replaced"
        )
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


UNREADABLE = 1  # `data check`'s exit code when unreadable patches are left in the dataset


def check_command(args) -> int:
    from core.data.check import check_dataset, exclude_unreadable

    report = check_dataset(
        args.path, workers=args.workers, seed=args.seed, progress=_lazy_bar("check")
    )
    listed = exclude_unreadable(report) if args.exclude else None
    if args.json:
        print(
            json.dumps({**report.to_dict(), "exclusions": None if listed is None else str(listed)})
        )
    else:
        _print_check(report, args, listed)
    return 0 if report.clean or args.exclude else UNREADABLE


def _lazy_bar(desc: str):
    """tqdm_progress, its bar made at the first call: the check starts its worker processes
    first, and a process with no other thread (tqdm's monitor is one) forks them at no cost."""
    from core.commands.evaluate import tqdm_progress

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or tqdm_progress(desc)
        bar(done, total)

    return update


def _print_check(report, args, listed) -> None:
    rate = f"{report.n / report.seconds:,.0f} patches/s, " if report.seconds else ""
    workers = f"{report.workers} process{'es' if report.workers > 1 else ''}"
    print(
        f"checked {report.n:,} patches of {report.name} ({report.format}) in "
        f"{report.seconds:.1f} s ({rate}{workers})"
    )
    for u in report.unreadable:
        print(f"  {u.split:<10} {u.id}  {u.reason}")
    found = len(report.unreadable)
    if args.exclude:
        print(
            f"excluded {patches(found)} from every reader (list: {listed}); each comes back "
            "once its file is replaced"
            if found
            else "every patch reads; no patch is excluded"
        )
        return
    if found:
        print(
            f"{patches(found)} unreadable; `python -m core data check {args.path} --exclude` "
            "keeps them out of training, evaluation and every page"
        )
    else:
        print("every patch reads")
    if report.excluded_before:
        print(
            f"note: an earlier check's list still excludes {patches(report.excluded_before)}; "
            "--exclude replaces it with what this check found"
        )


def patches(n: int) -> str:
    return f"{n:,} patch" if n == 1 else f"{n:,} patches"


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect datasets")
    actions = p.add_subparsers(dest="action", required=True)
    summary = actions.add_parser("summary", help="detect the format of PATH and print counts")
    _dataset_arguments(summary)
    summary.set_defaults(func=summary_command)
    check = actions.add_parser(
        "check",
        help="read every patch of PATH; list the unreadable ones (exit 1 if any)",
        description="Read every patch of every split, as training does, in parallel; list each "
        "unreadable or off-format patch with the reader's reason. Exit 0: every patch reads; "
        "1: unreadable patches (none excluded); 2: bad input.",
    )
    _dataset_arguments(check)
    check.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per CPU)"
    )
    check.add_argument(
        "--exclude",
        action="store_true",
        help="keep the unreadable patches out of every reader (a list in the cache, dropped "
        "for a patch whose file changes); exit 0 once they are out. A clean check clears it",
    )
    check.set_defaults(func=check_command)


def _dataset_arguments(p) -> None:
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--split-seed",
        "--seed",
        dest="seed",
        type=int,
        default=0,
        help="split seed (HCD, IDC), as `train --split-seed` (default 0)",
    )
