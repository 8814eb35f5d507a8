"""AppTest: Explain's "Can I trust these maps?" section on the demo checkpoint."""

from __future__ import annotations

import pytest
from test_page_explain import demo_checkpoint, explain_env, page, pcam  # noqa: F401 (fixtures)

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest


def run_check(at):
    at.selectbox(key="explain_per_page").set_value(4).run()
    at.number_input(key="explain_sanity_seeds").set_value(1).run()
    at.button(key="explain_sanity_run").click().run()
    assert not at.exception, at.exception
    return at


@pytest.mark.usefixtures("explain_env")
def test_the_section_shows_curves_verdicts_and_maps_before_and_after():
    at = run_check(pcam(page()))
    assert any(s.value == "Can I trust these maps?" for s in at.subheader)
    assert len(at.get("plotly_chart")) == 1
    verdicts = next(t.value for t in at.dataframe if "verdict" in t.value.columns)
    assert {"gradcam", "control: edge (Sobel)", "control: RandomCAM (seed fixed)"} <= set(
        verdicts["method"]
    )
    edge = verdicts.set_index("method").loc["control: edge (Sobel)", "verdict"]
    assert edge == "fails"  # the model-independent edge map never passes
    assert any("Verdict rule" in c.value for c in at.caption)
    captions = [c for image in at.image for c in image.captions]
    assert {"trained · 1", "randomised · 1"} <= set(captions)
    assert at.button(key="explain_sanity_twin_demo_pcam").label.startswith("Train the shuffled")
    # another similarity redraws from the disk cache, no recomputation
    at.radio(key="explain_sanity_metric_demo_pcam").set_value("ssim").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1


@pytest.mark.usefixtures("explain_env")
def test_slow_methods_are_left_out_unless_included_and_public_mode_trains_nothing(monkeypatch):
    monkeypatch.setenv("HISTOLENS_PUBLIC", "1")
    at = pcam(page())
    at.multiselect(key="explain_methods").set_value(["gradcam", "scorecam"]).run()
    assert any("Left out (slow on a CPU): scorecam" in c.value for c in at.caption)
    at = run_check(at)
    verdicts = next(t.value for t in at.dataframe if "verdict" in t.value.columns)
    assert "scorecam" not in set(verdicts["method"])
    assert any("Not on a public server" in c.value for c in at.caption)
