"""Handing freed heap memory back to the operating system between page runs (glibc only).

glibc's malloc keeps memory freed by large, short-lived buffers (a batch's activations, a CAM's
gradients, a decoded page of patches) in its heap for reuse: the server's resident size then
ratchets up with each page a visitor opens, and the next page's peak starts from there.
``malloc_trim(0)`` returns those free pages at once. Measured (bench/app_memory.py, see README):
the alternatives were worse: a fixed ``M_MMAP_THRESHOLD`` (every large tensor mmapped) held the
peak down as well but doubled CPU inference time (page faults on each batch), and
``M_ARENA_MAX=2`` changed nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # musl has no malloc_trim
    except OSError:
        return None


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS; False where that is not available (not glibc).
    Takes a few milliseconds; safe while other threads allocate (glibc locks each arena)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
