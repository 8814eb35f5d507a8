"""Public mode on the pages (AppTest): the banner, no training from the UI (the CLI instead),
no typed server paths, a checkpoint upload that refuses bad files with one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")


@pytest.fixture
def public(demo_data, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(demo_data))
    monkeypatch.setenv("HISTOLENS_PUBLIC", "1")
    return demo_data


def app_on(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(at) -> str:
    return " ".join(e.value for e in [*at.info, *at.code, *at.markdown])


def test_training_page_refuses_and_shows_the_cli(public):
    at = app_on("pages/training.py")
    assert "Start training" not in [b.label for b in at.button]
    assert "Training is off on this public deployment" in texts(at)
    assert "python -m core train" in texts(at)


def test_public_banner_says_nothing_persists(public):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert "nothing you do here is kept" in texts(at)


def test_training_page_starts_runs_when_not_public(demo_data, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(demo_data))
    monkeypatch.delenv("HISTOLENS_PUBLIC", raising=False)
    assert "nothing you do here is kept" not in texts(AppTest.from_file(APP).run())
    at = app_on("pages/training.py")
    assert "Training is off" not in texts(at)
    assert "Start training" in [b.label for b in at.button]


def test_a_boolean_secret_turns_public_mode_on(demo_data, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(demo_data))
    monkeypatch.delenv("HISTOLENS_PUBLIC", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["HISTOLENS_PUBLIC"] = True
    at.run().switch_page("pages/training.py").run()
    assert not at.exception
    assert "Training is off on this public deployment" in texts(at)
    os.environ.pop("HISTOLENS_PUBLIC", None)  # the helper copied it there, as Streamlit would
