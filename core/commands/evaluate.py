"""`python -m core evaluate` (not implemented yet)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="(not implemented yet)")
    p.set_defaults(func=lambda args: (print("evaluate: not implemented yet"), 2)[1])
