"""Files written atomically, and content hashes memoised by (path, size, mtime).

Kept free of heavy imports: the CLI and the evaluation cache key use it without loading torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from core.errors import InputError


def check_output(out: str | Path, *inputs: str | Path) -> None:
    """Refuse, in one line, an output path that is a folder or the same file as an input (an
    ``--out`` pointing at its own ``--checkpoint`` would replace the model with a PNG)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the path of a file to write.")
    for source in inputs:
        try:
            same = out.exists() and os.path.samefile(out, source)
        except OSError:
            same = False
        if same:
            raise InputError(f"{out}: is the input {source}; writing it would replace it.")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(fh)`` into a temp file beside ``path``, fsync, then ``os.replace``: a reader (or a
    process killed mid-write) sees the old file or the new one, never half of one. The temp file
    is removed if writing fails. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, **dumps_kwargs))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes; re-hashed only when its size or mtime changes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file; check the path")
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key so a rewritten file is hashed again
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
