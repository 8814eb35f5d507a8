"""A disk that cannot take the demo (read-only, full): every page warns once and carries on."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

PAGES = Path(__file__).resolve().parent.parent / "pages"


SMALL = dict(pcam=(("train", 8, 1),), hcd_labelled=4, hcd_test=0, hcd_slides=1, idc_patients=1)


def unwritable_data_root(tmp_path, monkeypatch) -> Path:
    """A data root the demo cannot be written to: a file where its folder should be (root
    ignores permissions, so a read-only folder would not do)."""
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HISTOLENS_DATA", str(blocker))
    return blocker


@pytest.mark.parametrize("page", ["datasets", "training", "explain", "compare"])
def test_a_page_warns_when_the_demo_cannot_be_written(page, tmp_path, monkeypatch):
    unwritable_data_root(tmp_path, monkeypatch)
    at = AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any("Could not write the demo datasets" in w for w in warnings), warnings
    assert any(b.label == "Retry writing the demo" for b in at.button)


def test_retry_writes_the_demo_once_the_disk_takes_it(tmp_path, monkeypatch):
    from core.data import demo

    full_size = demo.DemoSizes
    monkeypatch.setattr(demo, "DemoSizes", lambda: full_size(**SMALL))  # the writer's default
    blocker = unwritable_data_root(tmp_path, monkeypatch)
    at = AppTest.from_file(str(PAGES / "datasets.py"), default_timeout=180).run()
    assert any("Could not write the demo datasets" in w.value for w in at.warning)
    blocker.unlink()  # the disk is fixed
    next(b for b in at.button if b.label == "Retry writing the demo").click().run()
    assert not at.exception, at.exception
    assert not [w.value for w in at.warning if "Could not write" in w.value]
    assert "demo/pcam" in " ".join(str(o) for o in at.sidebar.selectbox[0].options)
