"""`python -m core`: one door for errors. Bad input (InputError or a subclass) and OSError leave
as one `error: ...` line and exit 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, make_checkpoint

from core.__main__ import main
from core.errors import InputError


@pytest.fixture
def evaluate_argv(demo_root, tmp_path) -> list[str]:
    ckpt = make_checkpoint(tmp_path / "a.pt")
    return ["evaluate", "--checkpoint", str(ckpt), "--data", str(demo_root / "pcam")]


@pytest.mark.parametrize(
    "raised, line",
    [
        (InputError("bad\ninput: fix it"), "error: bad input: fix it"),
        (OSError(28, "No space left on device"), "error: [Errno 28] No space left on device"),
    ],
)
def test_bad_input_and_os_errors_are_one_line_and_exit_2(
    raised, line, evaluate_argv, monkeypatch, capsys
):
    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr("core.evaluate.evaluate_checkpoint", fails)
    assert main(evaluate_argv) == 2
    assert capsys.readouterr().err.splitlines() == [line]


@pytest.mark.parametrize("raised", [ValueError("a bug"), KeyError("a bug"), TypeError("a bug")])
def test_a_bug_is_not_turned_into_exit_2(raised, evaluate_argv, monkeypatch, capsys):
    """A plain ValueError is a bug too: `evaluate` caught it and printed one line, exit 2."""

    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr("core.evaluate.evaluate_checkpoint", fails)
    with pytest.raises(type(raised)):
        main(evaluate_argv)
    assert "error:" not in capsys.readouterr().err


def test_a_bug_shows_its_traceback_and_exits_1(evaluate_argv):
    script = (
        "import sys, core.evaluate\n"
        "def bug(*args, **kwargs): raise KeyError('a bug')\n"
        "core.evaluate.evaluate_checkpoint = bug\n"
        "from core.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *evaluate_argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("KeyError: 'a bug'")


@pytest.mark.parametrize("command", ["compare", "robustness"])
def test_the_same_checkpoint_twice_is_one_line(command, demo_root, tmp_path, capsys):
    """`compare A A` printed one model's rows and a paired test of it with itself (p = 1); the
    same file under another spelling counts as the same file."""
    ckpt = make_checkpoint(tmp_path / "a.pt")
    again = tmp_path / "sub" / ".." / "a.pt"
    (tmp_path / "sub").mkdir()
    argv = [command, "--checkpoints", str(ckpt), str(again), "--data", str(demo_root / "pcam")]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "given twice" in err[0]
