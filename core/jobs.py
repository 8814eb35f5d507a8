"""Training runs as background processes: start one, cancel one, and the Training page's table.

A run writes its whole state into its run folder (layout and readers in core.run_folder); this
module launches the process that fills it and signals it to stop, and never imports torch or
streamlit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from core import config, run_folder
from core.data import DatasetError, dataset_name, open_dataset
from core.processes import process_alive, process_start
from core.run_folder import ACTIVE_STATES, LOG_FILE, STATUS_FILE, RunInfo
from core.train_config import TrainConfig, recommended_model


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
    run_dir = run_folder.make_run_dir(label, runs_dir)
    run_folder.write_config(run_dir, cfg)
    run_folder.write_status(
        run_dir, state="queued", created=run_folder.now_iso(), host=socket.gethostname()
    )
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
    if run_folder.read_json(run_dir / STATUS_FILE).get("state") == "queued":
        run_folder.write_status(run_dir, pid=proc.pid, pid_start=process_start(proc.pid))
    return run_dir


def cancel_run(run_dir: Path, grace_s: float = 0.0) -> bool:
    """Ask a live run to stop (SIGTERM; the trainer then writes "cancelled"). A run whose
    process is gone is marked cancelled directly. Returns False if the run had already ended.

    Only the trainer (rank 0 under torchrun) is signalled, never its process group: its
    DataLoader workers share that group, and killing them under the trainer's feet ended runs
    as "failed". The trainer stops at its next step or validation batch (every rank at the same
    step under torchrun), shuts its workers down and writes "cancelled" itself."""
    run_dir = Path(run_dir)
    status = run_folder.read_status(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return False
    pid = run_folder.status_pid(status)
    if pid and process_alive(pid, status.get("pid_start")):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and process_alive(pid, status.get("pid_start")):
            time.sleep(0.1)
        return True
    run_folder.write_status(run_dir, state="cancelled", ended=run_folder.now_iso())
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
    """One row per run: what it trains, where it is, how fast, how good (validation). No
    "created" column: the run's name starts with its UTC start time, and the table must fit a
    1400 px page."""
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
            }
        )
    return pd.DataFrame(rows)
