"""Shared fixtures. Every test runs with its data, cache and runs folders in a temp dir, so the
suite never writes into the checkout. Fake data is written on the fly in the real formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import (
    FAKE_WRITERS,
    FakeSet,
    make_checkpoint,
    write_fake_hcd,
    write_fake_idc,
    write_fake_pcam,
)


def pytest_addoption(parser):
    parser.addoption(
        "--like-cuda",
        action="store_true",
        help="run on the CPU with what a CUDA machine takes by default: 'auto' precision is "
        "bf16 autocast and training loads with 2 DataLoader workers (in-process code only; "
        "subprocesses such as `python -m core train` keep the CPU defaults)",
    )


@pytest.fixture(autouse=True)
def _like_cuda(request, monkeypatch):
    """--like-cuda: the precision and worker defaults of a CUDA machine, on the CPU, so the
    paths that differ there (bf16 outputs, worker processes, their shutdown) run here."""
    if not request.config.getoption("--like-cuda"):
        return
    import sys

    import core.device as device

    real_precision, real_workers = device.resolve_precision, device.default_workers

    def precision(requested, dev):
        return "bf16" if requested == "auto" else real_precision(requested, dev)

    for module in list(sys.modules.values()):  # `from core.device import ...` copies included
        if not getattr(module, "__name__", "").startswith("core"):
            continue
        if getattr(module, "resolve_precision", None) is real_precision:
            monkeypatch.setattr(module, "resolve_precision", precision)
        if getattr(module, "default_workers", None) is real_workers:
            monkeypatch.setattr(module, "default_workers", lambda dev: 2)
    import core.evaluate as evaluate

    monkeypatch.setattr(evaluate, "_no_gpu", lambda: False)  # resolved by the patched core.device


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HISTOLENS_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The embedded synthetic demo (all three formats), written once per test session."""
    from core.data.demo import write_demo

    root = tmp_path_factory.mktemp("demo")
    write_demo(root)
    return root


@pytest.fixture
def demo_data(demo_root, tmp_path) -> Path:
    """A data root holding a copy of the demo (``<root>/demo/{pcam,hcd,idc}``)."""
    data = tmp_path / "data"
    shutil.copytree(demo_root, data / "demo")
    return data


@pytest.fixture
def app_env(demo_root, tmp_path, monkeypatch) -> Path:
    """What the page tests open: a data root linking the demo, and two untrained checkpoints
    ``alpha`` and ``beta`` (seeds 0 and 1) trained on its PCam set, in the checkpoints folder
    (``tmp_path / "checkpoints"``). Returns the data root."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "demo").symlink_to(demo_root, target_is_directory=True)
    ckpts = tmp_path / "checkpoints"
    trained_on = {"dataset": str(data / "demo" / "pcam"), "dataset_format": "pcam"}
    make_checkpoint(ckpts / "alpha.pt", seed=0, **trained_on)
    make_checkpoint(ckpts / "beta.pt", seed=1, **trained_on)
    monkeypatch.setenv("HISTOLENS_DATA", str(data))
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(ckpts))
    return data


# -- tiny fake datasets in the real on-disk formats ------------------------------------------


@pytest.fixture(params=sorted(FAKE_WRITERS))
def fake_set(request, tmp_path) -> FakeSet:
    """Each reader's tiny fake dataset in turn (the same checks run on every reader)."""
    return FAKE_WRITERS[request.param](tmp_path / request.param)


@pytest.fixture
def fake_pcam(tmp_path) -> FakeSet:
    return write_fake_pcam(tmp_path / "pcam")


@pytest.fixture
def fake_hcd(tmp_path) -> FakeSet:
    return write_fake_hcd(tmp_path / "hcd", "kaggle")


@pytest.fixture
def fake_idc(tmp_path) -> FakeSet:
    return write_fake_idc(tmp_path / "idc")
