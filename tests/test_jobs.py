"""core.jobs and core.run_folder: run directories on disk, status merging, torn metrics lines, dead-process
detection, the config -> command-line mapping, and real background runs started and cancelled."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from core import jobs, processes, run_folder
from core.files import write_json_atomic


def test_run_dirs_are_unique_and_listed_newest_first(tmp_path):
    a = run_folder.make_run_dir("resnet18", tmp_path)
    b = run_folder.make_run_dir("resnet18", tmp_path)
    assert a != b and a.parent == b.parent == tmp_path
    run_folder.write_status(a, state="finished", created="2026-01-01T00:00:00+00:00")
    run_folder.write_status(b, state="finished", created="2026-01-02T00:00:00+00:00")
    (tmp_path / "not-a-run").mkdir()
    assert [r.path for r in run_folder.list_runs(tmp_path)] == [b, a]


def test_list_runs_reads_the_runs_folder_from_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_RUNS", str(tmp_path / "elsewhere"))
    assert run_folder.list_runs() == []
    run = run_folder.make_run_dir("x")
    run_folder.write_config(run, {"data": "d", "model": "idc_cnn"})
    assert [(r.path, r.config["model"]) for r in run_folder.list_runs()] == [(run, "idc_cnn")]


def test_write_status_merges_fields_and_leaves_no_temp_files(tmp_path):
    run_folder.write_status(tmp_path, state="running", pid=1)
    status = run_folder.write_status(tmp_path, progress={"fraction": 0.5})
    assert (
        status["state"] == "running"
        and status["pid"] == 1
        and status["progress"]["fraction"] == 0.5
    )
    assert json.loads((tmp_path / "status.json").read_text()) == status
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_read_metrics_skips_a_torn_last_line_and_has_all_columns(tmp_path):
    assert list(run_folder.read_metrics(tmp_path).columns) == list(run_folder.METRIC_COLUMNS)
    run_folder.append_metrics(tmp_path, [{"epoch": 0, "step": 1, "split": "train", "loss": 0.7}])
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 0, "step": 2, "spl')  # killed mid-write
    frame = run_folder.read_metrics(tmp_path)
    assert len(frame) == 1 and frame.loc[0, "loss"] == 0.7
    assert set(run_folder.METRIC_COLUMNS) <= set(frame.columns)


def test_a_line_torn_inside_a_character_or_not_a_record_is_skipped(tmp_path):
    """A byte that is not UTF-8 made the history unreadable: the runs table, the curves and
    --resume all failed with a bare codec error."""
    run_folder.append_metrics(tmp_path, [{"epoch": 0, "step": 1, "split": "train", "loss": 0.7}])
    with open(tmp_path / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"epoch": 0, "note": "\xc3\n5\n[1, 2]\n')  # torn in a character; non-records
    run_folder.append_metrics(tmp_path, [{"epoch": 1, "step": 2, "split": "train", "loss": 0.5}])
    assert list(run_folder.read_metrics(tmp_path)["loss"]) == [0.7, 0.5]
    run_folder.keep_metrics(tmp_path, before_epoch=1)
    assert list(run_folder.read_metrics(tmp_path)["loss"]) == [0.7]


def test_keep_metrics_drops_unfinished_epochs(tmp_path):
    run_folder.append_metrics(tmp_path, [{"epoch": e, "step": e} for e in (0, 0, 1, 2)])
    run_folder.keep_metrics(tmp_path, before_epoch=1)
    assert list(run_folder.read_metrics(tmp_path)["epoch"]) == [0, 0]


def test_a_dead_pid_shows_as_failed_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run_folder.write_status(tmp_path, state="running", pid=proc.pid, host=os.uname().nodename)
    (tmp_path / "train.log").write_text("epoch 1/3 ...\n")
    status = run_folder.read_status(tmp_path)
    assert status["state"] == "failed" and status["killed"]
    assert "--resume" in status["error"] and "epoch 1/3" in status["traceback"]


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs procfs")
def test_a_run_caught_before_its_command_line_shows_is_alive(tmp_path, monkeypatch):
    """Popen returns at exec's point of no return, before the kernel maps the new program's
    argv: a page polling then reads an empty (or the parent's) command line. Such a run was
    reported "ended without a final status (killed…)" (issue 13, item 8)."""
    real_popen = subprocess.Popen
    started = []

    def popen_mid_exec(argv, **kwargs):  # the trainer as /proc shows it during exec
        started.append(real_popen(SLEEPER, **kwargs))
        return started[-1]

    monkeypatch.setattr(jobs.subprocess, "Popen", popen_mid_exec)
    run = jobs.start_run({"data": "d", "model": "idc_cnn"}, runs_dir=tmp_path)
    try:
        status = run_folder.read_status(run)
        assert status["state"] == "queued" and not status.get("killed"), status
        assert [r.state for r in run_folder.list_runs(tmp_path)] == ["queued"]
    finally:
        started[0].kill(), started[0].wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs procfs")
def test_a_reused_pid_counts_as_dead_whatever_its_command_line(tmp_path):
    """Another process now holding the run's pid started later than the run's process did."""
    other = subprocess.Popen([*SLEEPER, "core"])
    try:
        start = processes.process_start(other.pid)
        assert processes.process_alive(other.pid, start)
        assert not processes.process_alive(other.pid, start - 1)  # the pid's earlier owner
        run_folder.write_status(tmp_path, state="running", pid=other.pid, pid_start=start - 1)
        assert run_folder.read_status(tmp_path)["state"] == "failed"
    finally:
        other.kill(), other.wait()


def test_a_status_without_a_start_time_counts_a_younger_process_as_a_reused_pid(tmp_path):
    """Status files written before start times were recorded: a process that started after the
    status was last updated cannot be the one that wrote it."""
    other = subprocess.Popen(SLEEPER)
    try:
        old = "2020-01-01T00:00:00+00:00"
        write_json_atomic(
            tmp_path / "status.json", {"state": "running", "pid": other.pid, "updated": old}
        )
        assert run_folder.read_status(tmp_path)["state"] == "failed"
        run_folder.write_status(tmp_path, state="running")  # updated now: the process is older
        assert run_folder.read_status(tmp_path)["state"] == "running"
    finally:
        other.kill(), other.wait()


def test_a_run_that_ends_while_being_read_shows_its_own_final_status(tmp_path, monkeypatch):
    """The process wrote "finished" and exited between the reader's read and its pid check:
    the run's own status wins over a guess."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run_folder.write_status(tmp_path, state="running", pid=proc.pid)
    real_alive = processes.process_alive

    def finishes_first(pid, start=None, updated=None):
        run_folder.write_status(tmp_path, state="finished")
        return real_alive(pid, start, updated)

    monkeypatch.setattr(run_folder, "process_alive", finishes_first)
    status = run_folder.read_status(tmp_path)
    assert status["state"] == "finished" and not status.get("killed")


def test_a_run_from_another_host_is_never_declared_dead(tmp_path):
    run_folder.write_status(tmp_path, state="running", pid=2**22 + 7, host="some-gpu-node")
    assert run_folder.read_status(tmp_path)["state"] == "running"


def test_cancel_of_a_run_whose_process_is_gone_marks_it_cancelled(tmp_path):
    run_folder.write_status(tmp_path, state="queued")
    assert jobs.cancel_run(tmp_path)
    assert run_folder.read_status(tmp_path)["state"] == "cancelled"
    assert not jobs.cancel_run(tmp_path)  # already over


def test_every_config_field_round_trips_through_the_command_line(tmp_path):
    from core.__main__ import build_parser
    from core.commands.train import config_from_args
    from core.train import TrainConfig

    cfg = TrainConfig(
        data="/data/x", model="resnet18", epochs=3, batch_size=8, lr=0.01, weight_decay=0.0,
        img_size=64, device="cpu", seed=5, split_seed=7, pretrained=True, augment=False,
        class_weighting=True, scheduler="plateau", patience=2, limit_batches=4, workers=1,
        precision="bf16", log_every=3, best_fp16=True,
    )  # fmt: skip
    assert {f.name for f in fields(cfg)} == set(asdict(cfg))
    argv = ["train", *jobs.config_to_argv(asdict(cfg)), "--out", str(tmp_path)]
    parsed = config_from_args(build_parser().parse_args(argv))
    assert parsed == cfg
    # None (decided by the trainer) is left out, so the trainer's defaults apply
    assert config_from_args(
        build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    ) == TrainConfig(data="d")


def wait_for_state(run, states, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_folder.read_status(run)
        if status.get("state") in states:
            return status
        time.sleep(0.25)
    raise AssertionError(
        f"{run}: still {run_folder.read_status(run).get('state')} after {timeout}s; log:\n{run_folder.tail_log(run)}"
    )


def wait_for_status(run, predicate, what: str, timeout=120.0) -> dict:
    """Poll status.json (written by the trainer) until ``predicate(status)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_folder.read_status(run)
        if predicate(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"{run}: no {what} after {timeout}s; log:\n{run_folder.tail_log(run)}")


def child_pids(pid: int) -> set[int]:
    """The live children of ``pid`` (here: its DataLoader workers), from procfs."""
    children = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children |= {int(c) for c in (task / "children").read_text().split()}
    return children


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs procfs")
def test_start_run_with_loader_workers_then_cancel_ends_cancelled(demo_root, tmp_path):
    """cancel_run signals the trainer only: it stops at its next step, shuts its two DataLoader
    workers down and writes "cancelled" (signalling the group killed the workers first and the
    run ended "failed")."""
    cfg = {
        "data": str(demo_root / "idc"), "epochs": 50, "batch_size": 8, "log_every": 1,
        "device": "cpu", "workers": 2,
    }  # fmt: skip
    run = jobs.start_run(cfg, runs_dir=tmp_path)
    assert run_folder.read_status(run)["state"] in ("queued", "running")
    assert [r.path for r in run_folder.list_runs(tmp_path)] == [run]
    status = wait_for_status(
        run, lambda s: (s.get("progress") or {}).get("step", 0) >= 1, "first logged step"
    )
    workers = child_pids(status["pid"])
    assert len(workers) == 2
    assert jobs.cancel_run(run)
    status = wait_for_state(run, ("cancelled", "failed", "finished"), timeout=60)
    assert status["state"] == "cancelled", status
    assert wait_for_exit(status["pid"])
    assert not [pid for pid in workers if processes.process_alive(pid)]  # none outlives the trainer


def wait_for_exit(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while processes.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not processes.process_alive(pid)


@pytest.fixture
def no_trainer(monkeypatch):
    """start_run without a training process (a short sleeper stands in for it)."""
    real_popen, started = subprocess.Popen, []

    def popen(argv, **kwargs):
        started.append(real_popen([sys.executable, "-c", "pass"], **kwargs))
        return started[-1]

    monkeypatch.setattr(jobs.subprocess, "Popen", popen)
    yield
    for proc in started:
        proc.wait()


def test_a_run_is_named_after_its_model_and_the_users_name(fake_idc, tmp_path, no_trainer):
    auto = jobs.start_run({"data": str(fake_idc.root)}, runs_dir=tmp_path / "runs")
    assert "-bn_cnn-" in auto.name  # the trainer's pick for 50 px patches, not "auto"
    named = jobs.start_run(
        {"data": str(fake_idc.root), "model": "resnet18"}, runs_dir=tmp_path / "runs",
        name="lr sweep #2",
    )  # fmt: skip
    assert "-resnet18-lr-sweep--2-" in named.name


def test_the_runs_table_names_datasets_not_formats(fake_idc, tmp_path, monkeypatch):
    """Two IDC sets (demo and real) must not both read "idc"."""
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path))
    runs = []
    for data in (tmp_path / "demo" / "idc", tmp_path.parent / "elsewhere" / "real" / "idc"):
        run = run_folder.make_run_dir("x", tmp_path / "runs")
        run_folder.write_config(run, {"data": str(data), "model": "idc_cnn"})
        runs.append(run)
    table = jobs.runs_table(run_folder.list_runs(tmp_path / "runs"))
    assert sorted(table["dataset"]) == ["demo/idc", "real/idc"]


def test_the_runs_table_says_each_runs_seed_and_split_seed(tmp_path):
    runs = tmp_path / "runs"
    for config in ({"seed": 2, "split_seed": 0}, {"seed": 3}):  # the second from before split_seed
        run_folder.write_config(run_folder.make_run_dir("x", runs), {"data": "d", **config})
    table = jobs.runs_table(run_folder.list_runs(runs))
    assert sorted(table["seed / split"]) == ["2 / 0", "3 / 3"]
