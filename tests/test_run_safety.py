"""Run folders: one live owner, kills during checkpoint writes, full disks, damaged status files.

Kills wait on events the trainer itself produces (the lock file naming its pid, an event file
written from inside a checkpoint write), never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import quick, write_idc_tree

from core import jobs, run_folder
from core.__main__ import main
from core.checkpoints import load_checkpoint, load_payload
from core.errors import is_disk_full
from core.run_lock import LOCK_FILE, RunInUse, acquire
from core.train import fit

REPO = Path(__file__).resolve().parent.parent
# Runs `python -m core train ARGS` with torch.save patched: once one last.pt has been written,
# the next checkpoint write stops half-way through its temp file, touches EVENT and waits for
# the SIGKILL the test sends (the kill lands inside a checkpoint write, every time).
BLOCKING_TRAINER = """
import os, signal, sys, torch
event, argv = sys.argv[1], sys.argv[2:]
real, done = torch.save, []
def save(obj, f, *args, **kwargs):
    if done:
        import io
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2]); f.flush(); os.fsync(f.fileno())
        open(event, "w").close()
        while True:
            signal.pause()
    real(obj, f, *args, **kwargs)
    if ".last.pt." in getattr(f, "name", ""):
        done.append(1)
torch.save = save
from core.__main__ import main
sys.exit(main(["train", *argv]))
"""


def wait_for(predicate, what: str, proc=None, timeout: float = 300):
    """Poll for an event the trainer produces; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"trainer exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout}s")


def _train_argv(data, run, epochs: int) -> list[str]:
    return [
        "--data", str(data), "--epochs", str(epochs), "--batch-size", "16", "--limit-batches",
        "1", "--log-every", "1", "--device", "cpu", "--patience", "99", "--out", str(run),
    ]  # fmt: skip


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _lock_owner(run: Path) -> int | None:
    try:
        return json.loads((run / LOCK_FILE).read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


@pytest.fixture
def data(tmp_path):
    return write_idc_tree(tmp_path / "idc", patients=6, per_class=4)


@pytest.fixture(autouse=True)
def _keep_sigterm():
    """`main(["train", ...])` in-process installs the trainer's SIGTERM handler: restore it."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_second_train_into_a_live_run_folder_is_refused_and_writes_nothing(data, tmp_path, capsys):
    run = tmp_path / "run"
    first = _spawn("-m", "core", "train", *_train_argv(data, run, epochs=50))
    try:
        wait_for(lambda: _lock_owner(run) == first.pid, "lock taken by the first run", first)
        os.kill(first.pid, signal.SIGSTOP)  # alive, owns the folder, and cannot move on
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        assert main(["train", *_train_argv(data, run, epochs=1)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use" in err[0] and str(first.pid) in err[0]
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        assert after == before  # nothing truncated, overwritten or added
        with pytest.raises(RunInUse):
            fit(quick(data), run)
    finally:
        first.kill()
        first.wait()
    # the dead owner's lock is taken over, said so, and the run continues
    assert main(["train", *_train_argv(data, run, epochs=1)]) == 0
    assert "took over the lock" in capsys.readouterr().out


@pytest.mark.slow
def test_kills_during_checkpoint_writes_never_lose_a_checkpoint_or_a_validation_line(
    data, tmp_path
):
    run, epochs, kills = tmp_path / "run", 4, 3
    for k in range(kills):
        event = tmp_path / f"writing-{k}"
        argv = _train_argv(data, run, epochs) if k == 0 else ["--resume", str(run)]
        proc = _spawn("-c", BLOCKING_TRAINER, str(event), *argv)
        try:
            wait_for(event.exists, f"checkpoint write {k}", proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            proc.kill()
            proc.communicate()
        assert list(run.glob(".*.tmp")), "the kill should land inside a checkpoint write"
        assert load_payload(run / "last.pt")["loop"]["epoch"] == k + 1  # the previous epoch
        load_checkpoint(run / "best.pt")
        assert run_folder.read_status(run)["killed"]
    result = subprocess.run(
        [sys.executable, "-m", "core", "train", "--resume", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "took over the lock" in result.stdout and "temp file(s)" in result.stdout
    assert not list(run.glob(".*.tmp"))
    metrics = run_folder.read_metrics(run)
    valid = metrics[metrics["split"] == "valid"]
    assert sorted(valid["epoch"]) == list(range(epochs))  # each epoch's validation exactly once
    assert load_payload(run / "last.pt")["loop"]["epoch"] == epochs


def test_full_disk_says_disk_full(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr("core.files.secrets.token_hex", lambda n: "feed")  # a known temp name
    (run / f".last.pt.{os.getpid()}.feed.tmp").symlink_to("/dev/full")  # every write: ENOSPC
    assert main(["train", *_train_argv(data, run, epochs=1)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: disk full") and "--resume" in err[0]
    status = run_folder.read_status(run)
    assert status["state"] == "failed" and status["error"].startswith("disk full")


@pytest.mark.parametrize(
    "exc",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
        RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"),
    ],
)
def test_disk_full_is_recognised_in_every_form(exc):
    assert is_disk_full(exc)
    try:
        raise ValueError("wrapped") from exc
    except ValueError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(RuntimeError("size mismatch for fc.weight"))


def test_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(dead.stdout)
    stale = [run / f".last.pt.{dead_pid}.tmp", run / ".metrics.jsonl.tmp"]
    live = run / f".status.json.{os.getppid()}.abc123.tmp"  # a live process (pytest's parent)
    for path in [*stale, live]:
        path.write_bytes(b"x" * 1000)
    lock = acquire(run)
    try:
        assert not any(p.exists() for p in stale) and live.exists()
        assert any("removed 2 temp file(s)" in n for n in lock.notices)
    finally:
        lock.release()
    again = acquire(run)  # a clean release leaves no owner behind: no takeover notice
    assert not any("took over" in n for n in again.notices)
    again.release()


@pytest.mark.parametrize("pid", ["abc", 1.5, -1, 0, True, [123], None, {"a": 1}])
def test_status_with_a_bad_pid_never_crashes_or_signals(pid, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / run_folder.STATUS_FILE).write_text(json.dumps({"state": "running", "pid": pid}))
    sent = []
    monkeypatch.setattr(os, "kill", lambda *a: sent.append(a))
    monkeypatch.setattr(os, "killpg", lambda *a: sent.append(a))
    assert run_folder.read_status(run)["state"] == "running"
    assert run_folder.list_runs(tmp_path)[0].status["pid"] == pid
    jobs.cancel_run(run)
    assert not [a for a in sent if a[1] != 0]  # never a real signal to a made-up pid


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe", b"", b"{", b'"text"'])
def test_damaged_status_files_read_as_empty(content, tmp_path):
    (tmp_path / run_folder.STATUS_FILE).write_bytes(content)
    assert run_folder.read_status(tmp_path)["state"] == "unknown"


DAMAGED_STATUSES = [
    {"state": 5},
    {"state": "running", "pid": "abc", "progress": "half"},
    {
        "state": "running",
        "progress": dict(epoch="1", epochs=2, step=1, steps_per_epoch=2, fraction=0.5),
    },
    {
        "state": "running",
        "progress": dict(epoch=1, epochs=2, step=1, steps_per_epoch=2, fraction=0.5, eta_s="soon"),
    },
    {"state": "finished", "created": 5, "best": {"score": "high"}},
    {"state": "failed", "error": ["a"], "traceback": 3, "notice": {}},
]


def test_damaged_status_fields_never_crash_the_runs_table_or_the_training_page(tmp_path):
    """Runs whose status.json fields have types the trainer never writes (and a config whose
    data is not a path) are listed and shown; the Training page runs without an exception."""
    runs = tmp_path / "runs"  # HISTOLENS_RUNS (conftest)
    for k, status in enumerate([{"state": "finished", "created": "2026-01-01"}, *DAMAGED_STATUSES]):
        (runs / f"run{k}").mkdir(parents=True)
        (runs / f"run{k}" / run_folder.STATUS_FILE).write_text(json.dumps(status))
        (runs / f"run{k}" / run_folder.CONFIG_FILE).write_text(
            json.dumps({"data": k or 5, "model": 3})
        )
    listed = run_folder.list_runs(runs)
    assert len(jobs.runs_table(listed)) == len(DAMAGED_STATUSES) + 1
    app_test = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest
    at = app_test.from_file(str(REPO / "pages" / "training.py"), default_timeout=120).run()
    assert not at.exception
