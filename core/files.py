"""Content hashes of files, memoised by (path, size, mtime) so pages can call them on every rerun.

Kept free of heavy imports: the CLI and the evaluation cache key use it without loading torch.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


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
