"""Memory and start-up budget of the app (bench/app_memory.py measures it in a browser).

The pages a visitor opens first (and Embeddings until a map is asked for) never import the
heavy libraries:
torch (~470 MB RSS with the CUDA build), torchvision (+160 MB: it pulls torch._dynamo, sympy and
triton), pytorch_grad_cam and scikit-learn load only when Explain, Compare or a model needs them.
Checked in a fresh interpreter, since the test process itself has imported them.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="needs streamlit (walks the app with AppTest)")

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "pytorch_grad_cam", "sklearn", "umap")

WALK = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("streamlit_app.py", default_timeout=300).run()
for page in sys.argv[1:]:
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
print(" ".join(m for m in {heavy} if m in sys.modules))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "pages", [[], ["pages/datasets.py"], ["pages/training.py"], ["pages/embeddings.py"]]
)
def test_first_pages_do_not_import_heavy_libraries(pages, demo_root, tmp_path):
    shutil.copytree(demo_root, tmp_path / "data" / "demo")
    env = dict(os.environ, HISTOLENS_DATA=str(tmp_path / "data"))
    result = subprocess.run(
        [sys.executable, "-c", WALK.format(heavy=HEAVY), *pages],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [], f"imported on {pages or 'Home'}: {result.stdout}"


def test_every_streamlit_cache_is_bounded():
    """Sessions share st.cache_* entries: each one has max_entries, so memory stays bounded."""
    unbounded = []
    for path in [REPO / "streamlit_app.py", *(REPO / "pages").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                call = decorator if isinstance(decorator, ast.Call) else None
                name = ast.unparse(call.func if call else decorator)
                if name.startswith("st.cache_") and not (
                    call and any(k.arg == "max_entries" for k in call.keywords)
                ):
                    unbounded.append(f"{path.relative_to(REPO)}: {node.name}")
    assert not unbounded, f"st.cache_* without max_entries: {unbounded}"
