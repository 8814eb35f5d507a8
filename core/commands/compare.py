"""`python -m core compare` (not implemented yet)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("compare", help="(not implemented yet)")
    p.set_defaults(func=lambda args: (print("compare: not implemented yet"), 2)[1])
