"""`python -m core demo` (not implemented yet)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="(not implemented yet)")
    p.set_defaults(func=lambda args: (print("demo: not implemented yet"), 2)[1])
