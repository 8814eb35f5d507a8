"""Where things live on disk. Every path comes from here (env vars override the defaults).

- ``HISTOLENS_DATA``   data root (default ``<repo>/data``); the app only reads datasets below it.
- ``HISTOLENS_CACHE``  derived files: IDC indexes, split manifests, prediction caches
                       (default ``<data root>/.cache``); real datasets may live on read-only disks.
- ``HISTOLENS_RUNS``   training run directories (default ``<repo>/runs``).
- ``HISTOLENS_CHECKPOINTS`` checkpoint folder scanned by the pages (default ``<repo>/checkpoints``).
- ``HISTOLENS_PUBLIC`` ``1`` for a shared deployment (public mode, see ``public_mode``).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
CLASS_NAMES = ("normal", "tumour")  # class index 1 is tumour everywhere
# Which class a CAM explains: a fixed class index, or None for each patch's own prediction.
TARGETS: dict[str, int | None] = {**{name: i for i, name in enumerate(CLASS_NAMES)}, "pred": None}
RESEARCH_NOTICE = "Research use only — not for diagnosis."


def public_mode() -> bool:
    """True when ``HISTOLENS_PUBLIC`` is 1/true/yes/on: a deployment anyone with the link uses.
    The UI then starts no training, opens no typed paths, caps uploads harder and says that
    nothing persists. A top-level Streamlit secret of that name reaches here as an env var."""
    return os.environ.get("HISTOLENS_PUBLIC", "").strip().lower() in {"1", "true", "yes", "on"}


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def data_root() -> Path:
    return _env_path("HISTOLENS_DATA", REPO_ROOT / "data")


def demo_root() -> Path:
    return data_root() / "demo"


def cache_dir() -> Path:
    return _env_path("HISTOLENS_CACHE", data_root() / ".cache")


def runs_dir() -> Path:
    return _env_path("HISTOLENS_RUNS", REPO_ROOT / "runs")


def checkpoints_dir() -> Path:
    return _env_path("HISTOLENS_CHECKPOINTS", REPO_ROOT / "checkpoints")


MAX_TYPED_CHARS = 512  # a typed folder longer than this is a mistake (names are ≤ 255 bytes)


def leaves_its_entry(path: Path, root: Path) -> bool:
    """The data-root rule: what the server's owner placed directly in ``root`` (folders, or links
    to datasets on other disks) is trusted; nothing *below* such an entry may resolve outside it.
    ``path`` is lexically under ``root``."""
    parts = Path(path).relative_to(root).parts
    if not parts:
        return False
    try:
        return not Path(path).resolve().is_relative_to((Path(root) / parts[0]).resolve())
    except (OSError, RuntimeError):  # a link loop
        return True


def folder_in_data_root(typed: str) -> Path:
    """A folder typed by a visitor: relative to the data root (or absolute inside it), opened by
    the same rule as the dataset list (``leaves_its_entry``). Too long, control characters,
    ``..``, or a link below a root entry that leads elsewhere: an InputError of one line."""
    root, text = data_root(), typed.strip()
    path = Path(text)
    if len(text) > MAX_TYPED_CHARS or any(len(part.encode()) > 255 for part in path.parts):
        raise InputError(f"that folder name is too long ({len(text)} characters); check it.")
    if not text.isprintable():
        raise InputError("that folder name holds control characters; type a plain path.")
    if path.is_absolute():
        if not path.is_relative_to(root):
            raise InputError(f"{path} is outside the data root {root}; move or link it there.")
        path = path.relative_to(root)
    if ".." in path.parts:
        raise InputError(f"{text} is outside the data root {root} ('..' is not allowed).")
    if leaves_its_entry(root / path, root):
        raise InputError(
            f"{text} is outside the data root {root}: a link inside it leads elsewhere; "
            "link the dataset itself into the data root instead."
        )
    return root / path


def is_within(path: Path, root: Path) -> bool:
    """True if ``path`` resolves inside ``root`` (used to keep a deployed app inside its roots)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True
