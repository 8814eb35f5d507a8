"""A disk that cannot take the demo (read-only, full): every page warns once and carries on."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

PAGES = Path(__file__).resolve().parent.parent / "pages"


@pytest.mark.parametrize("page", ["datasets", "training", "explain", "compare"])
def test_a_page_warns_when_the_demo_cannot_be_written(page, tmp_path, monkeypatch):
    import pages._shared

    def read_only():
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(pages._shared, "ensure_demo", read_only)
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "empty"))
    at = AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any("Could not write the demo datasets" in w for w in warnings), warnings
