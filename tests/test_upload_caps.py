"""Every file uploader says the cap the server enforces (issue 22, item 3): Streamlit 1.67 refuses
any upload over ``server.maxUploadSize`` with HTTP 413 whatever a widget's ``max_upload_size``
says, so an uploader promising more showed only "AxiosError ... 413" for a file in between."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from core.checkpoints import MAX_UPLOADED_CHECKPOINT_BYTES
from core.uploads import MAX_UPLOAD_BYTES

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest

REPO = Path(__file__).resolve().parent.parent
SERVER_CAP_MB = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"][
    "maxUploadSize"
]


def test_core_checks_no_more_than_the_server_accepts():
    assert MAX_UPLOADED_CHECKPOINT_BYTES <= SERVER_CAP_MB * 2**20
    assert MAX_UPLOAD_BYTES <= SERVER_CAP_MB * 2**20


@pytest.mark.parametrize("page", ["explain", "compare"])
def test_each_uploader_states_a_cap_the_server_enforces(app_env, page):
    at = AppTest.from_file(str(REPO / "pages" / f"{page}.py"), default_timeout=180).run()
    assert not at.exception
    caps = {u.key: u.proto.max_upload_size_mb for u in at.file_uploader}
    assert f"{page}_checkpoint_upload" in caps
    assert caps[f"{page}_checkpoint_upload"] == MAX_UPLOADED_CHECKPOINT_BYTES // 2**20
    assert all(0 < cap <= SERVER_CAP_MB for cap in caps.values()), caps
