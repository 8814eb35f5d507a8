"""Every page file also runs on its own, as `streamlit run pages/<page>.py` does it (Community
Cloud's smoke test runs each page file standalone): only the page's folder is on sys.path, not the
repository root, so a page must make `core` importable itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted((REPO / "pages").glob("*.py"))

RUN_PAGE = """
import os, sys
page = sys.argv[1]
sys.path.insert(0, os.path.dirname(page))  # exactly what `streamlit run <page>` adds
assert not any(os.path.abspath(p or ".") == os.path.dirname(os.path.dirname(page)) for p in sys.path)
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(page, default_timeout=300).run()
for exc in at.exception:
    print("EXCEPTION:", exc.message)
sys.exit(1 if at.exception else 0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_runs_standalone_without_the_repo_on_sys_path(page, demo_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_root, data / "demo")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HISTOLENS_DATA"] = str(data)
    result = subprocess.run(
        [sys.executable, "-c", RUN_PAGE, str(page)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
