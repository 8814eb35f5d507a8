"""AppTest: the Embeddings page with two checkpoints side by side on the demo PCam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "embeddings.py")


def n_points(trace: dict) -> int:
    """Points in a trace; plotly sends numeric arrays as base64 typed arrays."""
    x = trace["x"]
    if isinstance(x, dict):
        import base64

        import numpy as np

        return len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize
    return len(x)


def maps(at) -> dict[str, list[dict]]:
    """{chart title: traces} of the maps on the page."""
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return {s["layout"]["title"]["text"]: s["data"] for s in specs}


def opened(at):
    """The page opened and its maps asked for (they are drawn on request, then for the session)."""
    at.run()
    assert not at.exception
    assert not at.get("plotly_chart")  # nothing computed before the click
    at.button(key="embed_draw").click().run()
    assert not at.exception
    return at


def test_two_maps_side_by_side_recolour_and_select_a_group(app_env):
    at = opened(AppTest.from_file(PAGE, default_timeout=240))
    shown = maps(at)
    assert sorted(shown) == ["alpha<br>256 patches", "beta<br>256 patches"]
    for traces in shown.values():
        assert all(t["type"] == "scattergl" for t in traces)
        assert sum(n_points(t) for t in traces) == 256
        assert {t["name"] for t in traces} == {"normal", "tumour"}  # coloured by label
    assert any("not calibrated" in info.value for info in at.info)

    at.selectbox(key="embed_colour").set_value("outcome").run()
    assert not at.exception
    names = {t["name"] for t in maps(at)["alpha<br>256 patches"]}
    assert names <= {"TP", "FP", "FN", "TN"} and len(names) >= 2
    at.selectbox(key="embed_colour").set_value("disagreement").run()
    assert not at.exception
    alpha, beta = maps(at).values()
    assert {t["name"] for t in alpha} == {t["name"] for t in beta}  # one shared colouring

    at.selectbox(key="embed_colour").set_value("label").run()
    at.selectbox(key="embed_group").set_value("tumour").run()
    assert not at.exception
    csv = next(b for b in at.get("download_button") if "CSV" in b.proto.label)
    n_tumour = int(csv.proto.label.split("(")[1].split(")")[0])
    assert 0 < n_tumour < 256
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    assert any("alpha · Grad-CAM — P(tumour)" in c for c in captions)
    assert any("beta · Grad-CAM — P(tumour)" in c for c in captions)
    assert all("true tumour" in c for c in captions if "true" in c)


def test_one_checkpoint_offers_no_disagreement(app_env):
    at = opened(AppTest.from_file(PAGE, default_timeout=240))
    at.multiselect[0].set_value(at.multiselect[0].value[:1]).run()
    assert not at.exception
    assert len(maps(at)) == 1
    assert "disagreement" not in at.selectbox(key="embed_colour").options


def test_patch_files_rewritten_in_place_get_new_cams(app_env, monkeypatch):
    """The selection's Grad-CAMs were cached by checkpoint and patch ids only: a data file
    rewritten under the same ids showed the new patch under the old patch's heatmap."""
    import os
    import shutil

    import core.explain

    demo = app_env / "demo"
    source = demo.resolve()
    demo.unlink()
    shutil.copytree(source / "pcam", demo / "pcam")  # a copy of our own to rewrite
    calls = []
    real = core.explain.explain_gallery
    monkeypatch.setattr(
        core.explain, "explain_gallery", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    at = opened(AppTest.from_file(PAGE, default_timeout=240))
    at.selectbox(key="embed_group").set_value("tumour").run()
    assert not at.exception and len(calls) == 1
    at.run()
    assert len(calls) == 1  # a rerun is served from the cache

    for h5 in (demo / "pcam").glob("*_x.h5"):  # rewritten: new times, same patch ids
        stamp = h5.stat().st_mtime_ns + 10**9
        os.utime(h5, ns=(stamp, stamp))
    at.run()
    assert not at.exception
    assert len(calls) == 2
