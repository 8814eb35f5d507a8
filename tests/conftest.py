"""Shared fixtures. Every test runs with its data, cache and runs folders in a temp dir, so the
suite never writes into the checkout. Fake data is written on the fly in the real formats."""

from __future__ import annotations

import pytest


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
