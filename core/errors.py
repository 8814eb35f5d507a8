"""Bad input is reported as ONE printable line: the base of DatasetError and CheckpointError.

File names come from the OS as bytes; Python turns bytes that are not UTF-8 into surrogate escapes,
which crash ``print``, JSON writers and parquet. ``printable`` shows them (and control characters,
e.g. a newline or a terminal escape inside a file name) as visible ``\\xNN`` text instead.
"""

from __future__ import annotations

import errno

MAX_MESSAGE_CHARS = 600


def printable(text: str) -> str:
    """``text`` safe to print, serialise and show: undecodable bytes and control characters escaped."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from the OS
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def one_line(message: object) -> str:
    """``message`` as one printable line of bounded length."""
    flat = printable(" ".join(str(message).split()))
    return flat if len(flat) <= MAX_MESSAGE_CHARS else flat[: MAX_MESSAGE_CHARS - 1] + "…"


class InputError(ValueError):
    """Bad input; the message is one line naming the file, what is wrong and the fix."""

    def __init__(self, message: object = ""):
        super().__init__(one_line(message))


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# torch's zip writer reports a short write (what a full disk causes) only as these
TORCH_SHORT_WRITE = ("unexpected pos", "file write failed")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, RuntimeError) and any(s in str(exc) for s in TORCH_SHORT_WRITE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# torch's CPU allocator raises a plain RuntimeError; CUDA's is torch.OutOfMemoryError
OUT_OF_MEMORY = ("can't allocate memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (Python's, torch's CPU or CUDA allocator)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in OUT_OF_MEMORY)
