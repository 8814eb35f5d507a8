"""`python -m core train` as a user runs it: a 1-epoch run, SIGKILL mid-run then --resume, and
the 2-process torchrun (gloo, CPU) run, each producing the same run-directory format."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core import jobs
from core.checkpoints import load_checkpoint, load_payload

pytestmark = pytest.mark.slow

RUN_FILES = ("config.json", "metrics.jsonl", "status.json", "last.pt", "best.pt")


def core_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=300, **kwargs
    )


def assert_run_dir(run, epochs: int) -> None:
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    status = jobs.read_status(run)
    assert status["state"] == "finished" and status["epochs_run"] == epochs
    assert status["progress"]["fraction"] == 1.0
    metrics = jobs.read_metrics(run)
    assert list(metrics.loc[metrics.split == "valid", "epoch"]) == list(range(epochs))
    assert set(jobs.METRIC_COLUMNS) <= set(metrics.columns)
    assert (
        load_checkpoint(run / "best.pt").card.arch
        == json.loads((run / "config.json").read_text())["model"]
    )
    assert load_payload(run / "last.pt")["loop"]["epoch"] == epochs


def test_one_epoch_cpu_run_produces_the_run_dir(demo_root, tmp_path):
    run = tmp_path / "run"
    args = ["--data", demo_root / "idc", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    result = core_cli("train", *map(str, args), "--limit-batches", "4", "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert "finished" in result.stdout
    assert_run_dir(run, epochs=1)


def test_bad_data_fails_with_one_line_and_a_failed_status(tmp_path):
    run = tmp_path / "run"
    result = core_cli("train", "--data", str(tmp_path / "missing"), "--out", str(run))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert jobs.read_status(run)["state"] == "failed"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_sigkill_mid_epoch_then_resume_finishes(demo_root, tmp_path):
    run = tmp_path / "run"
    args = ["--data", demo_root / "idc", "--epochs", "3", "--batch-size", "16", "--log-every", "1"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core",
            "train",
            *map(str, args),
            "--limit-batches",
            "4",
            "--out",
            str(run),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # kill once the second epoch has logged progress (last.pt of epoch 1 is on disk)
        def in_epoch_2():
            metrics = jobs.read_metrics(run)
            return bool(((metrics["split"] == "train") & (metrics["epoch"] == 1)).any())

        wait_for(in_epoch_2, 120, "progress in epoch 2")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    status = jobs.read_status(run)
    assert status["state"] == "failed" and status["killed"]  # dead pid detected
    # killed during epoch 2 (maybe just after its checkpoint): at most that epoch is lost
    assert load_payload(run / "last.pt")["loop"]["epoch"] in (1, 2)

    result = core_cli("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr
    assert_run_dir(run, epochs=3)  # each epoch's validation logged exactly once


def test_torchrun_two_process_gloo_run_on_cpu(demo_root, tmp_path):
    run = tmp_path / "run"
    args = ["--data", demo_root / "idc", "--epochs", "2", "--batch-size", "16", "--device", "cpu"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "core", "train", *map(str, args), "--limit-batches", "2", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_run_dir(run, epochs=2)
    metrics = jobs.read_metrics(run)
    # rank 0 logged its 2 steps per epoch; validation gathered both ranks' shards
    assert metrics.query("split == 'train'")["step"].max() == 2 * 2
    assert (metrics.query("split == 'valid'")["n"] == 2 * 16 * 2).all()
