"""Training runs as background processes that write their whole state to disk.

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
                        "error": one line, "traceback": str}
        metrics.jsonl  one JSON object per logged step or epoch: epoch, step, split, loss,
                       accuracy, auc, lr, images_per_s, time (unix seconds)
        train.log      stdout + stderr of a process started by ``start_run``
        last.pt        full checkpoint (weights + model card + optimizer state), every epoch
        best.pt        full checkpoint of the epoch with the best validation score

Every reader works from these files only, so the list of runs survives an app restart and shows
runs started from the command line (or another machine writing into the same folder). Only the
training process writes ``status.json`` while it lives; JSON files are replaced atomically.
This module never imports torch or streamlit.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from core import config
from core.data import DatasetError, dataset_name, open_dataset
from core.files import write_json_atomic, write_text_atomic
from core.train_config import TrainConfig, recommended_model

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


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when absent, damaged or not an object."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
        return {}
    return found if isinstance(found, dict) else {}


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


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json. One written before ``split_seed`` existed drew its split with
    ``seed``, and says so here: resuming it keeps its patients where they were."""
    cfg = read_json(Path(run_dir) / CONFIG_FILE)
    if "seed" in cfg and "split_seed" not in cfg:
        cfg["split_seed"] = cfg["seed"]
    return cfg


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into status.json (read, update, atomic replace) and return it."""
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path)
    status.update(fields)
    status["updated"] = now_iso()
    write_json_atomic(path, status, indent=2, default=str)
    return status


def append_metrics(run_dir: Path, records: Iterable[Mapping[str, Any]]) -> None:
    lines = "".join(json.dumps(dict(r), default=float) + "\n" for r in records)
    with open(Path(run_dir) / METRICS_FILE, "a") as fh:
        fh.write(lines)
        fh.flush()


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


def keep_metrics(run_dir: Path, before_epoch: int) -> None:
    """On resume, drop the records of epochs that were not finished (they are trained again)."""
    kept = [r for r in _metric_records(run_dir) if r.get("epoch", 0) < before_epoch]
    write_text_atomic(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame with at least METRIC_COLUMNS (empty if nothing logged yet)."""
    frame = pd.DataFrame(_metric_records(run_dir))
    for column in METRIC_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype="float64")
    return frame


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22); it never
    changes for the life of a process, exec included. None without procfs or once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


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


def process_alive(pid: int, start: int | None = None, updated: str | None = None) -> bool:
    """True while the process that wrote ``pid`` into a status lives (not a zombie).

    A pid can be reused by a later process. ``start`` (process_start of the writer) tells them
    apart exactly; status files without it fall back to ``updated``: a process that started
    after the status was last written cannot have written it. The command line is no witness:
    it reads empty while a freshly started process is still inside exec.
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


def status_pid(status: Mapping[str, Any]) -> int | None:
    """The run's pid when status.json holds a plausible one (an int > 1). A damaged or
    hand-edited value must never reach os.kill: 0 and -1 would signal whole process groups."""
    pid = status.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 else None


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


# What the trainer writes into status.json, by type. A damaged or hand-edited file may hold
# anything, and the Training page formats these fields directly: other types are dropped.
STATUS_TYPES = {
    **dict.fromkeys(("state", "created", "started", "updated", "ended", "host"), str),
    **dict.fromkeys(("error", "traceback", "notice"), str),
    "progress": dict,
    "best": dict,
}
PROGRESS_NUMBERS = ("epoch", "epochs", "step", "steps_per_epoch", "fraction")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


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


def tail_log(run_dir: Path, lines: int = 30) -> str:
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


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


def config_to_argv(cfg: Mapping[str, Any]) -> list[str]:
    """TrainConfig fields -> `python -m core train` flags (``batch_size`` -> ``--batch-size``).

    None means "let the trainer decide" and is left out; booleans use --flag / --no-flag.
    """
    argv: list[str] = []
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def model_for(cfg: TrainConfig) -> str:
    """The model a run will train: the chosen one, or the trainer's pick for the data's patch
    size (core.train.resolve_config decides the same way); "auto" if the data cannot be read."""
    if cfg.model:
        return cfg.model
    try:
        return recommended_model(max(open_dataset(cfg.data).image_size))
    except DatasetError:
        return "auto"


def start_run(
    cfg: TrainConfig | Mapping[str, Any], runs_dir: Path | None = None, name: str | None = None
) -> Path:
    """Launch `python -m core train ... --out RUN_DIR` as a detached background process.

    ``cfg`` is a TrainConfig (or a mapping of its fields, checked here the same way). The process
    gets its own session (so cancelling it never touches the caller) and writes everything to the
    run directory; the caller only keeps the path. Returns the run directory, named
    ``<UTC time>-<model>[-<name>]-<random>``.
    """
    if not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.from_dict(cfg)
    label = "-".join(part for part in (model_for(cfg), (name or "").strip()) if part)
    cfg = asdict(cfg)
    run_dir = make_run_dir(label, runs_dir)
    write_config(run_dir, cfg)
    write_status(run_dir, state="queued", created=now_iso(), host=socket.gethostname())
    argv = [sys.executable, "-m", "core", "train", *config_to_argv(cfg), "--out", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=config.REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    # The child writes its own pid too; this covers a child that dies before it can.
    if read_json(run_dir / STATUS_FILE).get("state") == "queued":
        write_status(run_dir, pid=proc.pid, pid_start=process_start(proc.pid))
    return run_dir


def cancel_run(run_dir: Path, grace_s: float = 0.0) -> bool:
    """Ask a live run to stop (SIGTERM; the trainer then writes "cancelled"). A run whose
    process is gone is marked cancelled directly. Returns False if the run had already ended.

    Only the trainer (rank 0 under torchrun) is signalled, never its process group: its
    DataLoader workers share that group, and killing them under the trainer's feet ended runs
    as "failed". The trainer stops at its next step or validation batch (every rank at the same
    step under torchrun), shuts its workers down and writes "cancelled" itself."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return False
    pid = status_pid(status)
    if pid and process_alive(pid, status.get("pid_start")):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and process_alive(pid, status.get("pid_start")):
            time.sleep(0.1)
        return True
    write_status(run_dir, state="cancelled", ended=now_iso())
    return True


# -- what the Training page shows (plain data and plotly figures, no streamlit) -------------


def format_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _rounded(value: float | None, digits: int) -> float:
    """NaN (an empty cell, not "None") when there is nothing to show, e.g. a cancelled run."""
    return float("nan") if value is None else round(float(value), digits)


def runs_table(runs: list[RunInfo]) -> pd.DataFrame:
    """One row per run: what it trains, where it is, how fast, how good (validation)."""
    rows = []
    for run in runs:
        progress = run.status.get("progress") or {}
        best = run.status.get("best") or {}
        data = run.config.get("data")
        seeds = f"{run.config.get('seed', '?')} / {run.config.get('split_seed', '?')}"
        rows.append(
            {
                "run": run.name,
                "state": run.state,
                "model": run.config.get("model") or "auto",
                "dataset": dataset_name(data) if isinstance(data, str) and data else "",
                # runs with one split seed share their test patients (compare them there)
                "seed / split": seeds,
                "epoch": f"{progress.get('epoch', 0)}/{progress.get('epochs', run.config.get('epochs', '?'))}",
                # early stopping ends a run before its last epoch: finished is 100 %
                "progress": 1.0
                if run.state == "finished"
                else float(progress.get("fraction", 0.0)),
                "images/s": _rounded(progress.get("images_per_s"), 1),
                "ETA": format_seconds(progress.get("eta_s")) if run.state == "running" else "",
                "best valid AUC": _rounded(best.get("score"), 4),
                "created": run.status.get("created", ""),
            }
        )
    return pd.DataFrame(rows)
