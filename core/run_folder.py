"""A run folder: its layout, and the files every reader and the trainer share.

A run is a directory under ``config.runs_dir()`` (one per run, never shared)::

    <runs>/<UTC time>-<model>-<random>/
        config.json    the TrainConfig (``asdict``), resolved by the trainer once it starts
        status.json    {"state": queued|running|finished|failed|cancelled, "pid", "pid_start"
                        (the process's start time, telling a reused pid apart), "host",
                        "created", "started", "updated", "ended", "progress": {epoch, epochs,
                        step, steps_per_epoch, fraction, images_per_s, eta_s}, "best": {...},
                        "device", "precision" (as resolved), "phase": train|valid,
                        "first_step_at" (unix seconds, once the first step ran) and
                        "startup" {imports, dataset, model, loaders: when each stage ended},
                        "excluded_patches" (patches the dataset's exclusion list kept out
                        of this run: unreadable when checked, core.data.exclusions),
                        "error": one line, "traceback": str}
        metrics.jsonl  one JSON object per logged step or epoch: epoch, step, split, loss,
                       accuracy, auc, lr, images_per_s, time (unix seconds)
        train.log      stdout + stderr of a process started by ``core.jobs.start_run``
        last.pt        full checkpoint (weights + model card + optimizer state), every epoch
        best.pt        weights + calibrated model card of the epoch with the best validation
                       score, written on each improving epoch (core.train)

Every reader works from these files only, so the list of runs survives an app restart and shows
runs started from the command line (or another machine writing into the same folder). Only the
training process writes ``status.json`` while it lives; JSON files are replaced atomically.
This module never imports torch or streamlit.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from core import config
from core.files import write_json_atomic, write_text_atomic
from core.processes import process_alive

ACTIVE_STATES = ("queued", "running")
METRIC_COLUMNS = ("epoch", "step", "split", "loss", "accuracy", "auc", "lr", "images_per_s", "time")
CONFIG_FILE, STATUS_FILE, METRICS_FILE, LOG_FILE = (
    "config.json",
    "status.json",
    "metrics.jsonl",
    "train.log",
)


@dataclass(frozen=True)
class RunInfo:
    path: Path
    name: str
    status: dict[str, Any]
    config: dict[str, Any]

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")


def list_runs(runs_dir: Path | None = None) -> list[RunInfo]:
    """Every run directory under ``runs_dir`` (newest first), read from disk."""
    root = Path(runs_dir or config.runs_dir())
    if not root.is_dir():
        return []
    runs = [
        RunInfo(path=p, name=p.name, status=read_status(p), config=read_config(p))
        for p in root.iterdir()
        if p.is_dir() and ((p / STATUS_FILE).is_file() or (p / CONFIG_FILE).is_file())
    ]
    return sorted(runs, key=lambda r: (r.status.get("created", ""), r.name), reverse=True)


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json, with a run whose process died without a final word reported as failed.

    The verdict "killed" needs the process gone *and* the run's own status still active when
    read again afterwards: a run that ends between the two reads shows its final status."""
    run_dir = Path(run_dir)
    status = _typed(read_json(run_dir / STATUS_FILE)) or {"state": "unknown"}
    if not _looks_dead(status):
        return status
    status = _typed(read_json(run_dir / STATUS_FILE)) or status
    if status.get("state") not in ACTIVE_STATES:
        return status
    pid = status.get("pid")
    return {
        **status,
        "state": "failed",
        "killed": True,
        "error": (
            f"process {pid} ended without a final status (killed, e.g. SIGKILL or out of "
            f"memory); continue it with `python -m core train --resume {run_dir}`"
        ),
        "traceback": tail_log(run_dir),
    }


# What the trainer writes into status.json, by type. A damaged or hand-edited file may hold
# anything, and the Training page formats these fields directly: other types are dropped.
STATUS_TYPES = {
    **dict.fromkeys(("state", "created", "started", "updated", "ended", "host"), str),
    **dict.fromkeys(("error", "traceback", "notice"), str),
    "progress": dict,
    "best": dict,
    "excluded_patches": int,
}
PROGRESS_NUMBERS = ("epoch", "epochs", "step", "steps_per_epoch", "fraction")


def _typed(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` without the fields whose type the trainer never writes."""
    clean = {k: v for k, v in status.items() if isinstance(v, STATUS_TYPES.get(k, object))}
    progress = clean.get("progress", {})
    if not all(_number(progress.get(k)) for k in PROGRESS_NUMBERS):
        clean.pop("progress", None)
    else:
        for key in ("images_per_s", "eta_s"):
            if not _number(progress.get(key)):
                progress[key] = None
    if not _number(clean.get("best", {}).get("score", 0.0)):
        clean.pop("best")
    return clean


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _looks_dead(status: dict[str, Any]) -> bool:
    pid = status_pid(status)
    same_host = status.get("host", socket.gethostname()) == socket.gethostname()
    start = status.get("pid_start")
    return (
        status.get("state") in ACTIVE_STATES
        and pid is not None
        and same_host
        and not process_alive(pid, start if isinstance(start, int) else None, status.get("updated"))
    )


def status_pid(status: Mapping[str, Any]) -> int | None:
    """The run's pid when status.json holds a plausible one (an int > 1). A damaged or
    hand-edited value must never reach os.kill: 0 and -1 would signal whole process groups."""
    pid = status.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 else None


def tail_log(run_dir: Path, lines: int = 30) -> str:
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json. One written before ``split_seed`` existed drew its split with
    ``seed``, and says so here: resuming it keeps its patients where they were."""
    cfg = read_json(Path(run_dir) / CONFIG_FILE)
    if "seed" in cfg and "split_seed" not in cfg:
        cfg["split_seed"] = cfg["seed"]
    return cfg


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame with at least METRIC_COLUMNS (empty if nothing logged yet)."""
    frame = pd.DataFrame(_metric_records(run_dir))
    for column in METRIC_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype="float64")
    return frame


def _metric_records(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    # errors="replace": a line torn inside a multi-byte character must not make the whole
    # history unreadable (it then fails to parse, and is skipped like any torn line)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a killed process
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when absent, damaged or not an object."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
        return {}
    return found if isinstance(found, dict) else {}


# -- writing (core.jobs creates a run; the trainer's rank 0 fills it) ----------------------


def make_run_dir(name: str, runs_dir: Path | None = None) -> Path:
    """A new, unique run directory; two sessions starting runs at once never collide."""
    root = Path(runs_dir or config.runs_dir())
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "run"
    path = root / f"{stamp}-{slug}-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def write_config(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / CONFIG_FILE, dict(cfg), indent=2, default=str)


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into status.json (read, update, atomic replace) and return it."""
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path)
    status.update(fields)
    status["updated"] = now_iso()
    write_json_atomic(path, status, indent=2, default=str)
    return status


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_metrics(run_dir: Path, records: Iterable[Mapping[str, Any]]) -> None:
    lines = "".join(json.dumps(dict(r), default=float) + "\n" for r in records)
    with open(Path(run_dir) / METRICS_FILE, "a") as fh:
        fh.write(lines)
        fh.flush()


def keep_metrics(run_dir: Path, before_epoch: int) -> None:
    """On resume, drop the records of epochs that were not finished (they are trained again)."""
    kept = [r for r in _metric_records(run_dir) if r.get("epoch", 0) < before_epoch]
    write_text_atomic(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
