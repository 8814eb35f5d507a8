"""core.cuda_warmup: starts only for runs that may use CUDA on a machine that shows a GPU,
never imports torch, and does nothing harmful where there is no driver."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core import cuda_warmup


@pytest.mark.parametrize(
    ("request_", "visible", "gpu_nodes", "expected"),
    [
        ("auto", None, True, True),
        ("cuda:1", None, True, True),
        ("cpu", None, True, False),
        ("mps", None, True, False),
        ("auto", "", True, False),  # CUDA_VISIBLE_DEVICES="" hides every GPU
        ("auto", None, False, False),  # no /dev/nvidiactl: no NVIDIA driver here
    ],
)
def test_only_runs_that_may_use_a_visible_gpu_are_warmed(
    monkeypatch, request_, visible, gpu_nodes, expected
):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(cuda_warmup.os.path, "exists", lambda path: gpu_nodes)
    assert cuda_warmup.wanted(request_) is expected


def test_without_a_driver_library_the_warmup_gives_up_quietly(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(cuda_warmup.ctypes, "CDLL", missing)
    assert cuda_warmup._retain_primary_context(0) is False


def test_the_warmup_starts_before_torch_and_never_imports_it():
    code = (
        "import sys, core.cuda_warmup as w, core.commands.train; "
        "w.wanted = lambda request: True; t = w.start('cuda:0'); t.join(); "
        "assert w.start('cuda:0') is None, 'started twice'; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
