"""AppTest: the Compare page with two checkpoints on the demo data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_evaluate import make_checkpoint  # pytest puts tests/ on sys.path

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest


@pytest.fixture
def app_env(demo_root, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "demo").symlink_to(demo_root, target_is_directory=True)
    ckpts = tmp_path / "checkpoints"
    make_checkpoint(ckpts / "alpha.pt", seed=0)
    make_checkpoint(ckpts / "beta.pt", seed=1)
    monkeypatch.setenv("HISTOLENS_DATA", str(data))
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(ckpts))


PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "compare.py")


def confusion_counts(at) -> dict[str, list]:
    """{chart title: z} of the count confusion matrices on the page."""
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        title = spec["layout"].get("title", {}).get("text", "")
        if title.endswith(": counts"):
            out[title] = spec["data"][0]["z"]
    return out


def sensitivities(at) -> list[str]:
    return [m.value for m in at.metric if m.label == "Sensitivity"]


def test_page_compares_two_checkpoints_and_thresholds_move_the_numbers(app_env):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    assert not at.exception
    counts = confusion_counts(at)
    assert sorted(counts) == ["alpha: counts", "beta: counts"]
    assert len(sensitivities(at)) == 2

    before = counts["alpha: counts"]
    sens_before = sensitivities(at)
    at.slider(key="compare_threshold::alpha").set_value(0.05).run()
    assert not at.exception
    after = confusion_counts(at)
    assert after["alpha: counts"] != before
    assert after["beta: counts"] == counts["beta: counts"]
    assert sensitivities(at)[0] != sens_before[0]
    # the predicted-tumour column grows when the threshold falls
    assert after["alpha: counts"][1][1] + after["alpha: counts"][0][1] > before[1][1] + before[0][1]


def test_sensitivity_helper_sets_thresholds(app_env):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    at.number_input[0].set_value(0.95).run()
    next(b for b in at.button if b.label.startswith("Choose thresholds")).click().run()
    assert not at.exception
    for value in sensitivities(at):
        assert float(value) >= 0.95


def image_captions(at) -> list[str]:
    return [img.caption for element in at.get("image") for img in element.proto.imgs]


def test_idc_shows_each_models_patient_mosaic_and_gradcams(app_env):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    data = at.sidebar.selectbox[0]
    data.select_index(next(k for k, o in enumerate(data.options) if "(idc)" in o)).run()
    assert not at.exception
    assert "Patients" in [s.value for s in at.subheader]
    captions = image_captions(at)
    assert sum("P(tumour) blue 0" in c for c in captions) == 2  # one mosaic per model
    assert any(c.startswith("ground truth") for c in captions)
    # disagreement browser: each shown patch has one Grad-CAM per model beside it
    originals = sum("· true" in c for c in captions)
    assert originals > 0
    assert sum(c.startswith("alpha: Grad-CAM") for c in captions) == originals
    assert sum(c.startswith("beta: Grad-CAM") for c in captions) == originals


def test_a_rerun_reads_no_checkpoint_file(app_env, monkeypatch):
    """Cards are read once per file version and models come from the page cache: moving a
    threshold slider opens no .pt file. Counted at torch.load, under every checkpoint reader."""
    import torch

    loads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        loads.append((Path(f).name, kwargs.get("mmap", False)))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    assert not at.exception
    first = list(loads)
    loads.clear()
    at.slider(key="compare_threshold::alpha").set_value(0.2).run()
    assert not at.exception
    print(f"checkpoint loads: first run {first}; rerun {loads}")
    assert loads == []
    full = [name for name, mmap in first if not mmap]
    # each model once for its predictions and once for the page's Grad-CAM model cache
    assert sorted(full) == ["alpha.pt", "alpha.pt", "beta.pt", "beta.pt"]
    assert sorted(name for name, mmap in first if mmap) == ["alpha.pt", "beta.pt"]
