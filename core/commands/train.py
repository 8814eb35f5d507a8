"""`python -m core train` (not implemented yet)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("train", help="(not implemented yet)")
    p.set_defaults(func=lambda args: (print("train: not implemented yet"), 2)[1])
