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


def test_datasets_page_offers_no_typed_path(public):
    at = app_on("pages/datasets.py")
    assert not [t for t in at.text_input if t.key == "datasets_path"]
    assert at.selectbox(key="datasets_entry").options


def test_explain_takes_a_session_checkpoint_and_refuses_a_bad_one(public):
    at = AppTest.from_file(str(REPO / "pages" / "explain.py"), default_timeout=120).run()
    assert not at.exception
    shipped = REPO / "checkpoints" / "demo_pcam_hcd_cnn.pt"
    upload = at.file_uploader(key="explain_checkpoint_upload")
    upload.set_value(
        [("not_ours.pt", b"PK\x03\x04 no", "application/octet-stream"),
         ("mine.pt", shipped.read_bytes(), "application/octet-stream")]
    ).run()  # fmt: skip
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("not_ours.pt: ")
    options = at.multiselect(key="explain_models").options
    assert any("mine" in option for option in options)
    assert at.image  # the page goes on: the grid of the preselected checkpoint
