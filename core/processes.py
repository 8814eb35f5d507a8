"""Is the process that wrote a pid still alive? The ground floor: standard library only, so the
run folder, the run lock and the demo writer all ask it without importing each other.

A pid can be reused by a later process. ``process_start`` (the kernel's start time, fixed for the
life of a process, exec included) tells them apart exactly; whoever records a pid records its
start too. The command line is no witness: it reads empty while a new process is inside exec.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22); it never
    changes for the life of a process, exec included. None without procfs or once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start: int | None = None, updated: str | None = None) -> bool:
    """True while the process that wrote ``pid`` into a status lives (not a zombie).

    ``start`` (process_start of the writer) tells a reused pid apart exactly; status files
    without it fall back to ``updated`` (an ISO time): a process that started after the status
    was last written cannot have written it.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():  # no procfs (macOS): trust kill(0)
        return True
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False  # exited since kill(0)
    if state in ("Z", "X"):
        return False
    if start is not None:
        return process_start(pid) == start
    return not (updated and _started_after(pid, updated))


def _started_after(pid: int, iso: str) -> bool:
    """True if ``pid`` started more than a second after the ISO time ``iso`` (whole seconds)."""
    ticks = process_start(pid)
    try:
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        when = datetime.fromisoformat(iso).timestamp()
    except (OSError, StopIteration, ValueError, TypeError):
        return False
    return ticks is not None and boot + ticks / os.sysconf("SC_CLK_TCK") > when + 1.5
