"""`python -m core data` (not implemented yet)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("data", help="(not implemented yet)")
    p.set_defaults(func=lambda args: (print("data: not implemented yet"), 2)[1])
