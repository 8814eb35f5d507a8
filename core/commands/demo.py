"""`python -m core demo [--out DIR]`: write the synthetic demo sets (pcam/, hcd/, idc/)."""

from __future__ import annotations

from pathlib import Path


def run(args) -> int:
    from core import config
    from core.data.demo import write_demo

    out = Path(args.out) if args.out else config.demo_root()
    for name, path in write_demo(out).items():
        print(f"{name}: {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="write the synthetic demo datasets (all three formats)")
    p.add_argument("--out", help="output folder (default: <data root>/demo)")
    p.set_defaults(func=run)
