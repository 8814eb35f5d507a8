"""`python -m core explain` (not implemented yet)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("explain", help="(not implemented yet)")
    p.set_defaults(func=lambda args: (print("explain: not implemented yet"), 2)[1])
