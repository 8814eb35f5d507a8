"""One live process owns a run directory: ``<run>/run.lock``.

The lock is an exclusive ``flock`` on ``run.lock``, which the kernel drops when its process dies
(SIGKILL and out-of-memory kills included), so a lock can never outlive its owner. The file also
holds the owner's ``{"pid", "pid_start", "host", "since"}`` for people and for the refusal
message. A second ``train`` into the same folder is refused with one line before it writes
anything; a lock left by a dead process is taken over, and the new owner says so. The owner also
removes temp files that interrupted writes left behind (``.<name>.<pid>[...].tmp``) — only those
whose writer is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.processes import process_alive, process_start
from core.run_folder import now_iso

LOCK_FILE = "run.lock"


class RunInUse(InputError):
    """Another live process owns the run directory."""


@dataclass
class RunLock:
    path: Path
    fd: int
    notices: list[str]

    def release(self) -> None:
        """A clean end empties the file: an owner found in it later was interrupted."""
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def _owner_text(fd: int) -> dict:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    pid, host = owner.get("pid", "?"), owner.get("host", "?")
    return f"pid {pid} on {host} (since {owner.get('since', '?')})"


def acquire(run_dir: Path) -> RunLock:
    """Own ``run_dir`` (created if needed) or raise RunInUse naming the owner."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner_text(fd)
        os.close(fd)
        raise RunInUse(
            f"{run_dir}: in use by a live training process, {_describe(owner)}; choose another "
            "--out, or wait for it to end (cancel it from the Training page)."
        ) from None
    notices = []
    previous = _owner_text(fd)
    if previous.get("pid") not in (None, os.getpid()):
        notices.append(
            f"{run_dir}: took over the lock of {_describe(previous)}, which is no longer running."
        )
    me = {
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "host": socket.gethostname(),
        "since": now_iso(),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    notices += _remove_leftovers(run_dir)
    return RunLock(path, fd, notices)


def _writer_alive(name: str) -> bool:
    """Whether a temp file's writer (the pid in its name) is another live process."""
    pids = [int(part) for part in name.split(".") if part.isdigit()]
    return any(pid != os.getpid() and process_alive(pid) for pid in pids)


def _remove_leftovers(run_dir: Path) -> list[str]:
    """Delete ``.*.tmp`` files left by writes that were killed; one notice if any."""
    removed, size = 0, 0
    for tmp in run_dir.glob(".*.tmp"):
        if tmp.is_file() and not _writer_alive(tmp.name):
            size += tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            removed += 1
    if not removed:
        return []
    return [
        f"{run_dir}: removed {removed} temp file(s) ({size / 2**20:.1f} MiB) left by interrupted writes."
    ]
