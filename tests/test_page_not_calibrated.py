"""AppTest: Explain and Compare say which offered checkpoints are not calibrated, and why
(issue 22, item 3); the Embeddings page shares Compare's picker (pages/_shared/inputs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_checkpoint

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest

PAGES = Path(__file__).resolve().parent.parent / "pages"
CALIBRATED = dict(
    calibration={"method": "platt", "a": 1.3, "b": -0.2},
    threshold=0.42,
    operating_points={"max_balanced_accuracy": 0.42},
)


@pytest.mark.parametrize("page, key", [("explain", "explain_models"), ("compare", None)])
def test_an_uncalibrated_checkpoint_is_labelled_and_explained(app_env, page, key):
    beta = app_env.parent / "checkpoints" / "beta.pt"  # alpha stays as old checkpoints are
    make_checkpoint(beta, seed=1, dataset=str(app_env / "demo" / "pcam"), dataset_format="pcam",
                    **CALIBRATED)  # fmt: skip
    at = AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=180).run()
    chooser = at.multiselect(key=key) if key else at.sidebar.multiselect[0]
    if key:
        chooser.set_value(["alpha", "beta"]).run()
        chooser = at.multiselect(key=key)
    assert not at.exception
    alpha, beta = (next(o for o in chooser.options if f" · {n}" in o) for n in ("alpha", "beta"))
    assert alpha.endswith(" · alpha · not calibrated") and "not calibrated" not in beta
    captions = [c.value for c in at.caption if "not calibrated" in c.value]
    assert len(captions) == 1 and captions[0].startswith("alpha is not calibrated: its card")
