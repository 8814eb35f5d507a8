"""The checkpoint catalogue: which checkpoints the pages offer, their short names, and each
one's model card, read once per file version.

Pages rerun on every widget change; a card is read by ``core.checkpoints.read_card`` (the
archive's pickle alone, without torch; the weights stay on disk; bench/card_read.py) and kept per
(path, size, mtime_ns), so a rerun opens no checkpoint file and a rewritten file is read again.
Listing, naming and reading cards do not import torch.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from core import config
from core.errors import InputError


def checkpoint_choices() -> list[Path]:
    """Checkpoints the pages offer: ``*.pt`` in the checkpoints folder (sorted by name), then
    each training run's ``best.pt`` (newest run first)."""
    shipped = sorted(config.checkpoints_dir().glob("*.pt"))
    runs = sorted(
        config.runs_dir().glob("*/best.pt"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    return shipped + runs


RUN_STAMP = re.compile(r"^\d{8}-\d{6}-")  # the UTC time core.jobs puts before a run's name


def model_names(paths) -> list[str]:
    """Short unique names for tables and legends: the file stem in the checkpoints folder; for
    a run's ``best.pt`` the run's name without its time stamp (``idc_cnn-smoke-95f921``), other
    files of a run as ``run/stem``; full paths if those still collide. The same file twice is an
    InputError (a comparison of a model with itself would merge its rows)."""
    paths = [Path(p) for p in paths]
    shipped = config.checkpoints_dir().resolve()
    names = [p.stem if p.parent.resolve() == shipped else _run_name(p) for p in paths]
    if len(set(names)) != len(names):
        names = [str(p) for p in paths]
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:  # one model twice: its rows would merge into one
            raise InputError(f"{path}: given twice; give each checkpoint once")
        seen.add(path.resolve())
    return names


def _run_name(path: Path) -> str:
    run = RUN_STAMP.sub("", path.parent.name) or path.parent.name
    return run if path.stem == "best" else f"{run}/{path.stem}"


def checkpoint_label(path) -> str:
    """How a checkpoint reads wherever one is chosen: model, the data it learned from, when,
    and its short name: "idc_cnn · real/idc · 2026-11-23 00:20 · idc_cnn-smoke-95f921", then
    " · not calibrated" when its card has no calibration learnt on validation."""
    from core.checkpoints import CheckpointError
    from core.data import dataset_name

    short = model_names([path])[0]
    try:
        card = read_card(path)
    except (CheckpointError, OSError):
        return f"{short} (unreadable)"
    data = dataset_name(card.dataset) if card.dataset else card.dataset_format
    parts = [card.arch, data + (" (synthetic)" if card.synthetic_data else ""), card.created[:16]]
    label = " · ".join([*(p.replace("T", " ") for p in parts if p), short])
    return label if card.is_calibrated else f"{label} · not calibrated"


def not_calibrated_why(path) -> str | None:
    """Why the checkpoint's P(tumour) is not calibrated (one line from its card), or None when
    it is, or when its card does not read (``card_problem`` says that)."""
    from core.checkpoints import CheckpointError

    try:
        return read_card(path).not_calibrated_why
    except (CheckpointError, OSError):
        return None


def card_problem(path) -> str | None:
    """None when the checkpoint's card reads; else its one-line reason (CheckpointError)."""
    from core.checkpoints import CheckpointError

    try:
        read_card(path)
    except (CheckpointError, OSError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def readable(paths) -> list:
    """The checkpoints whose card reads, in order: a broken file is never a default choice."""
    return [p for p in paths if card_problem(p) is None]


def card_thresholds(paths) -> dict[str, float]:
    """``{model name: the operating point in its card}`` (0.5 for checkpoints without one)."""
    paths = list(paths)
    return {name: read_card(p).threshold for name, p in zip(model_names(paths), paths, strict=True)}


def card_conformal(paths) -> dict[str, dict]:
    """``{model name: the card's split-conformal quantiles}`` ({} for checkpoints without)."""
    paths = list(paths)
    return {name: read_card(p).conformal for name, p in zip(model_names(paths), paths, strict=True)}


def read_card(path: str | Path):
    """The checkpoint's ModelCard, read once per file version (validated like a full load;
    raises core.checkpoints.CheckpointError). Treat it as read-only: it is shared."""
    path = Path(path)
    if not path.is_file():
        return _read(path)  # raises the one-line "no such checkpoint file"
    stat = path.stat()
    return _card_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _card_of(path: str, size: int, mtime_ns: int):
    return _read(Path(path))  # size and mtime are in the key: a rewritten file is read again


def _read(path: Path):
    from core.checkpoints import read_card

    return read_card(path)


def trained_on_index(entries, checkpoint_path) -> int:
    """Index of the dataset entry the checkpoint was trained on (by path, then by the name's
    tail, then by format); 0 when nothing matches or the card cannot be read."""
    from core.checkpoints import CheckpointError

    try:
        card = read_card(checkpoint_path)
    except (CheckpointError, OSError):
        return 0
    trained = Path(card.dataset)
    places = (
        [trained] if trained.is_absolute() else [Path.cwd() / trained, config.REPO_ROOT / trained]
    )
    places = {p.resolve() for p in places}
    tests = [lambda e: e.format == card.dataset_format]
    if card.dataset:
        tests[:0] = [
            lambda e: Path(e.path).resolve() in places,
            lambda e: card.dataset.rstrip("/").endswith(e.name),
        ]
    for test in tests:
        for k, entry in enumerate(entries):
            if test(entry):
                return k
    return 0
