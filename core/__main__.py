"""Command-line entry: ``python -m core <command> ...``.

Each command lives in ``core/commands/<name>.py`` and exposes ``register(subparsers)``, which
adds its sub-parser and sets ``func`` (returns the exit code). Heavy imports (torch) happen
inside ``func`` so ``python -m core data summary`` stays fast.

Errors leave through one door, here: a command raises ``InputError`` (or a subclass) for bad
input, and ``main`` prints it (or an ``OSError``) as one ``error: ...`` line on stderr and returns
2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from core.errors import InputError, one_line

COMMANDS = (
    "demo",
    "data",
    "train",
    "evaluate",
    "calibrate",
    "explain",
    "compare",
    "robustness",
    "embed",
    "import",
    "export",
    "sanity",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="HistoLens command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"core.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
