"""`python -m core train` as a user runs it: a 1-epoch run, SIGKILL mid-run then --resume, and
the 2-process torchrun (gloo, CPU) run, each producing the same run-directory format."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import run_folder
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
    status = run_folder.read_status(run)
    assert status["state"] == "finished" and status["epochs_run"] == epochs
    assert status["progress"]["fraction"] == 1.0
    metrics = run_folder.read_metrics(run)
    assert list(metrics.loc[metrics.split == "valid", "epoch"]) == list(range(epochs))
    assert set(run_folder.METRIC_COLUMNS) <= set(metrics.columns)
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


def test_a_trained_run_is_never_started_over(demo_root, tmp_path, capsys):
    """`--out` on a trained run, or `--resume` of a run whose last.pt is gone, used to start
    from epoch 0 and replace its best.pt and metrics without a word."""
    from dataclasses import asdict

    from core.__main__ import main
    from core.train_config import TrainConfig

    run = tmp_path / "run"
    run_folder.write_config(run, asdict(TrainConfig(data=str(demo_root / "idc"))))
    (run / "best.pt").write_bytes(b"the best weights")
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--data", str(demo_root / "idc"), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a trained run (best.pt)" in err[0]
    assert f"--resume {run}" in err[0]
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has best.pt but no last.pt" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_of_a_damaged_config_or_a_weights_only_last_pt_says_which(
    demo_root, tmp_path, capsys
):
    from dataclasses import asdict

    from core.__main__ import main
    from core.checkpoints import ModelCard, save_checkpoint
    from core.models import build_model
    from core.train_config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{garbage")
    assert main(["train", "--resume", str(run)]) == 2
    assert (
        "config.json is not a run config (damaged?)" in capsys.readouterr().err
    )  # not "not found"
    run_folder.write_config(run, asdict(TrainConfig(data=str(demo_root / "idc"), model="bn_cnn")))
    save_checkpoint(run / "last.pt", build_model("bn_cnn")[0], ModelCard.for_model("bn_cnn"))
    assert main(["train", "--resume", str(run)]) == 1  # was: error: 'optimizer'
    err = capsys.readouterr().err.strip().splitlines()
    assert "no loop, optimizer, scheduler state" in err[-1] and "cannot resume" in err[-1]
    assert run_folder.read_status(run)["state"] == "failed"


def test_bad_data_fails_with_one_line_and_a_failed_status(tmp_path):
    run = tmp_path / "run"
    result = core_cli("train", "--data", str(tmp_path / "missing"), "--out", str(run))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert run_folder.read_status(run)["state"] == "failed"


# `python -m core train` in a process that signals itself the moment its trainer writes a chosen
# event into the run directory ("step:N": the N-th training metrics line; "valid:N": the N-th
# start of validation): deterministic on any machine, where a test polling from outside races a
# fast GPU that finishes short epochs between two polls.
SIGNAL_AT_EVENT = """
import os, signal, sys
from core import run_folder
from core.__main__ import main

sig, (kind, n), argv = getattr(signal, sys.argv[1]), sys.argv[2].split(":"), sys.argv[3:]
seen = {"step": 0, "valid": 0}
real_append, real_status = run_folder.append_metrics, run_folder.write_status

def event(name):
    seen[name] += 1
    if name == kind and seen[name] == int(n):
        os.kill(os.getpid(), sig)

def append_metrics(run_dir, records):
    real_append(run_dir, records)
    for record in records:
        if record.get("split") == "train":
            event("step")

def write_status(run_dir, **fields):
    status = real_status(run_dir, **fields)
    if fields.get("phase") == "valid":
        event("valid")
    return status

run_folder.append_metrics, run_folder.write_status = append_metrics, write_status
sys.exit(main(["train", *argv]))
"""


def train_until(signal_name: str, event: str, *args) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", SIGNAL_AT_EVENT, signal_name, event, *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("device", ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
@pytest.mark.parametrize(
    "event, finished_epochs",
    [("step:1", 0), ("step:9", 1), ("valid:2", 1)],
    ids=["first step", "mid-epoch", "during validation"],
)
def test_sigterm_with_loader_workers_ends_cancelled(
    demo_root, tmp_path, event, finished_epochs, device
):
    """SIGTERM (what cancel_run sends) with two DataLoader workers, at the first step, in the
    middle of epoch 2 and during epoch 2's validation: the run always ends "cancelled" and
    last.pt holds the last finished epoch (on CUDA too, where there is one)."""
    run = tmp_path / "run"
    args = ["--data", demo_root / "idc", "--epochs", "3", "--batch-size", "8", "--device", device]
    args += ["--limit-batches", "6", "--log-every", "1", "--workers", "2", "--out", run]
    result = train_until("SIGTERM", event, *args)
    assert result.returncode == 130, result.stderr[-3000:]
    status = run_folder.read_status(run)
    assert status["state"] == "cancelled", status
    if finished_epochs:
        assert load_payload(run / "last.pt")["loop"]["epoch"] == finished_epochs
        assert load_checkpoint(run / "last.pt").card.arch == run_folder.read_config(run)["model"]
    else:
        assert not (run / "last.pt").exists()


def test_sigkill_mid_epoch_then_resume_finishes(demo_root, tmp_path):
    run = tmp_path / "run"
    args = ["--data", demo_root / "idc", "--epochs", "3", "--batch-size", "16", "--log-every", "1"]
    # killed at step 2 of epoch 2 (4 steps per epoch), after last.pt of epoch 1 was written
    result = train_until("SIGKILL", "step:6", *args, "--limit-batches", "4", "--out", run)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    status = run_folder.read_status(run)
    assert status["state"] == "failed" and status["killed"]  # dead pid detected
    assert load_payload(run / "last.pt")["loop"]["epoch"] == 1

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
    metrics = run_folder.read_metrics(run)
    # rank 0 logged its 2 steps per epoch; validation gathered both ranks' shards
    assert metrics.query("split == 'train'")["step"].max() == 2 * 2
    assert (metrics.query("split == 'valid'")["n"] == 2 * 16 * 2).all()


def test_torchrun_cancel_of_rank_0_stops_every_rank_at_the_same_step(demo_root, tmp_path):
    """cancel_run signals rank 0 only (its pid is in status.json): the ranks agree on the stop at
    the next logged step, so none is left waiting in a collective and the run ends cancelled."""
    run, script = tmp_path / "run", tmp_path / "signal_at_event.py"
    script.write_text(SIGNAL_AT_EVENT)
    args = ["--data", demo_root / "idc", "--epochs", "2", "--batch-size", "8", "--device", "cpu"]
    args += ["--limit-batches", "4", "--log-every", "1", "--out", run]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + [str(script), "SIGTERM", "step:2", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert result.returncode != 0  # torchrun reports ranks that exit 130 as failed
    status = run_folder.read_status(run)
    assert status["state"] == "cancelled", result.stderr[-3000:]
    train_steps = run_folder.read_metrics(run).query("split == 'train'")["step"]
    assert train_steps.max() <= 3  # stopped at the step after the signal, not at the end


def test_a_killed_run_leaves_a_calibrated_weights_only_best_pt(demo_root, tmp_path):
    """Issue 22, item 3: a SIGKILL leaves no moment to tidy up, so best.pt must already be
    what inference needs (weights + card, no optimizer or loop state) and calibrated."""
    run = tmp_path / "run"
    args = ["--data", demo_root / "idc", "--epochs", "3", "--batch-size", "16", "--log-every", "1"]
    result = train_until("SIGKILL", "step:6", *args, "--limit-batches", "4", "--out", run)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert run_folder.read_status(run)["killed"]
    assert set(load_payload(run / "best.pt")) == {"format", "format_version", "card", "state_dict"}
    card = load_checkpoint(run / "best.pt").card
    assert card.is_calibrated and card.operating_points["max_balanced_accuracy"] == card.threshold


def test_train_help_states_the_defaults_the_config_uses():
    """Every `train --help` line that names a default names TrainConfig's (the help said label
    smoothing defaults to 0 while the recipe's default is 0.1)."""
    import re

    from core.__main__ import build_parser
    from core.train_config import DEFAULTS

    train = next(
        a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train"
    )[1]
    checked = 0
    for action in train._actions:
        named = re.search(r"\(default (\S+?)[;)]", action.help or "")
        if named and action.dest in DEFAULTS and not isinstance(DEFAULTS[action.dest], bool):
            assert named.group(1) == str(DEFAULTS[action.dest]), (action.dest, action.help)
            checked += 1
    assert checked >= 5
