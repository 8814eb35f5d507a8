"""AppTest: a broken checkpoint that sorts first is never the default on Explain or Compare; it
is marked in the select box, one st.error names it when chosen, and the page goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_evaluate import make_checkpoint  # pytest puts tests/ on sys.path

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest

PAGES = Path(__file__).resolve().parent.parent / "pages"


@pytest.fixture
def env(demo_root, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "demo").symlink_to(demo_root, target_is_directory=True)
    ckpts = tmp_path / "checkpoints"
    make_checkpoint(ckpts / "beta.pt", seed=0)
    make_checkpoint(ckpts / "gamma.pt", seed=1)
    (ckpts / "alpha.pt").write_bytes(b"not a checkpoint at all")  # sorts first
    monkeypatch.setenv("HISTOLENS_DATA", str(data))
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(ckpts))
    return ckpts


def test_compare_skips_a_broken_checkpoint_by_default_and_names_it_when_chosen(env):
    at = AppTest.from_file(str(PAGES / "compare.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    box = at.multiselect(key="compare_checkpoints")
    assert [Path(p).name for p in box.value] == ["beta.pt", "gamma.pt"]
    assert not at.error
    box.select(env / "alpha.pt").run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "alpha" in at.error[0].value
    assert "unreadable" in box.format_func(env / "alpha.pt")


def test_explain_skips_a_broken_checkpoint_by_default_and_names_it_when_chosen(env):
    at = AppTest.from_file(str(PAGES / "explain.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    box = at.multiselect(key="explain_models")
    assert box.value == ["beta"]
    assert not at.error
    box.select("alpha").run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "alpha" in at.error[0].value
