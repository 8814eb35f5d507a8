"""AppTest: the Compare page with two checkpoints on the demo data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import make_checkpoint  # pytest puts tests/ on sys.path

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest
from drawn import drawn, ok, widget  # noqa: E402 (after the skip)

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
    assert sum(c.startswith("alpha · Grad-CAM") for c in captions) == originals
    assert sum(c.startswith("beta · Grad-CAM") for c in captions) == originals


def test_a_rerun_reads_no_checkpoint_file(app_env, monkeypatch):
    """Cards are read once per file version and models come from the page cache: moving a
    threshold slider opens no .pt file. Counted at torch.load and at the card reader."""
    import torch

    from core import checkpoints

    loads = []
    real_load, real_card = torch.load, checkpoints.read_card

    def counting_load(f, *args, **kwargs):
        loads.append((Path(f).name, "mmap" if kwargs.get("mmap") else "full"))
        return real_load(f, *args, **kwargs)

    def counting_card(path):
        loads.append((Path(path).name, "card"))
        return real_card(path)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(checkpoints, "read_card", counting_card)
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    assert not at.exception
    first = list(loads)
    loads.clear()
    at.slider(key="compare_threshold::alpha").set_value(0.2).run()
    assert not at.exception
    print(f"checkpoint loads: first run {first}; rerun {loads}")
    assert loads == []
    # each model once: predictions and Grad-CAMs share the app's one model cache
    assert sorted(name for name, kind in first if kind == "full") == ["alpha.pt", "beta.pt"]
    assert sorted(name for name, kind in first if kind == "card") == ["alpha.pt", "beta.pt"]
    assert not [name for name, kind in first if kind == "mmap"]


# -- one source of truth per control (issue 13, items 1-3) -----------------------------


def applied_thresholds(at: AppTest) -> dict[str, float]:
    """{model: threshold} as the confusion matrices state it ("**alpha** @ 0.787")."""
    found = (re.fullmatch(r"\*\*(.+)\*\* @ ([0-9.]+)", m.value) for m in at.markdown)
    return {m[1]: float(m[2]) for m in found if m}


def slider_thresholds(at: AppTest) -> dict[str, float]:
    return {
        s.label.split("·", 1)[1].strip(): round(float(s.value), 3)
        for s in at.slider
        if s.label.startswith("Threshold ·")
    }


def test_compare_shared_threshold_round_trip_keeps_sliders_and_matrices_equal(app_env):
    at = drawn(AppTest.from_file(PAGE, default_timeout=180))
    drawn(at, widget(at, "toggle", "One shared threshold").set_value(True))
    drawn(at, widget(at, "button", "Choose thresholds for sensitivity").click())
    shared = round(float(widget(at, "slider", "Threshold (all models)").value), 3)
    assert set(applied_thresholds(at).values()) == {shared}
    assert all(float(s) >= 0.9 for s in sensitivities(at))

    drawn(at, widget(at, "toggle", "One shared threshold").set_value(False))
    assert slider_thresholds(at) == applied_thresholds(at)
    assert all(float(s) >= 0.9 for s in sensitivities(at))  # still the thresholds the user chose

    before = applied_thresholds(at)
    first = next(iter(before))
    drawn(at, widget(at, "slider", f"Threshold · {first}").set_value(before[first] + 0.001))
    after = applied_thresholds(at)
    assert slider_thresholds(at) == after
    assert after[first] == pytest.approx(before[first] + 0.001)
    assert all(after[n] == before[n] for n in before if n != first)


def test_compare_widgets_keep_their_values_when_the_checkpoints_drop_below_two(app_env):
    at = drawn(AppTest.from_file(PAGE, default_timeout=180))
    drawn(at, widget(at, "number_input", "Patches").set_value(12))
    drawn(at, widget(at, "toggle", "Grad-CAM per model").set_value(False))
    first = next(iter(slider_thresholds(at)))
    drawn(at, widget(at, "slider", f"Threshold · {first}").set_value(0.3))
    both = list(widget(at, "multiselect", "Checkpoints").value)
    drawn(at, widget(at, "multiselect", "Checkpoints").set_value(both[:1]))
    assert any("at least two" in i.value for i in at.info)
    drawn(at, widget(at, "multiselect", "Checkpoints").set_value(both))
    assert_compare_shows_what_it_uses(at, patches=12, cams=False, thresholds={first: 0.3})
    # the next click sends what the browser shows: nothing may change silently
    drawn(at, widget(at, "selectbox", "Sort by").set_value("spread"))
    assert_compare_shows_what_it_uses(at, patches=12, cams=False, thresholds={first: 0.3})


def assert_compare_shows_what_it_uses(at, patches: int, cams: bool, thresholds: dict) -> None:
    assert widget(at, "number_input", "Patches").value == patches
    assert widget(at, "toggle", "Grad-CAM per model").value is cams
    assert slider_thresholds(at) == applied_thresholds(at)
    assert {n: slider_thresholds(at)[n] for n in thresholds} == thresholds
    shown = next(c.value for c in at.caption if "showing the first" in c.value)
    total = int(re.match(r"([\d,]+) patches", shown)[1].replace(",", ""))
    assert int(re.search(r"showing the first (\d+)", shown)[1]) == min(patches, total)
    assert any("Grad-CAM" in c for c in image_captions(at)) is cams


def test_compare_selection_lives_in_the_url(app_env):
    at = ok(AppTest.from_file(PAGE, default_timeout=180).run())
    checkpoints = widget(at, "multiselect", "Checkpoints")
    reordered = list(reversed(checkpoints.value))
    checkpoints.set_value(reordered).run()
    widget(at, "selectbox", "Split").set_value("valid").run()
    ok(at)
    params = dict(at.query_params)
    assert params, "the selection is not in the URL"

    reloaded = AppTest.from_file(PAGE, default_timeout=180)
    reloaded.query_params.update(params)
    ok(reloaded.run())
    assert list(widget(reloaded, "multiselect", "Checkpoints").value) == reordered
    assert widget(reloaded, "selectbox", "Split").value == "valid"
    assert sorted(confusion_counts(reloaded)) == sorted(confusion_counts(at))


def test_compare_ignores_a_url_naming_unknown_checkpoints(app_env):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.query_params["checkpoints"] = ["no-such-checkpoint", "neither"]
    ok(at.run())
    assert len(widget(at, "multiselect", "Checkpoints").value) == 2


def test_sliders_start_at_each_cards_threshold_and_the_ci_unit_is_shown(app_env, tmp_path):
    make_checkpoint(tmp_path / "checkpoints" / "alpha.pt", seed=0, threshold=0.3)  # its card's
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    assert not at.exception
    assert at.slider(key="compare_threshold::alpha").value == pytest.approx(0.3)
    assert at.slider(key="compare_threshold::beta").value == pytest.approx(0.5)  # older card
    table = at.dataframe[0].value
    assert set(table["CI unit"]) <= {"patient", "patch"}


def test_compare_skips_a_broken_checkpoint_by_default_and_names_it_when_chosen(app_env, tmp_path):
    broken = tmp_path / "checkpoints" / "0-broken.pt"  # sorts before alpha and beta
    broken.write_bytes(b"not a checkpoint at all")
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception, at.exception
    box = at.multiselect(key="compare_checkpoints")
    assert [Path(p).name for p in box.value] == ["alpha.pt", "beta.pt"]
    assert not at.error
    box.select(broken).run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "0-broken" in at.error[0].value
    assert "unreadable" in box.format_func(broken)


def test_the_page_names_each_test_its_unit_the_calibration_map_and_the_conformal_coverage(
    app_env, tmp_path
):
    """Issue 27: p-values and intervals name their test and unit; the card's map (with the
    guard's reason) and its conformal sets' coverage are shown per model."""
    conformal = {"score": "lac", "n_valid": 200, "quantiles": {"0.05": 0.8, "0.1": 0.6, "0.2": 0.4}}
    note = "temperature instead of platt: platt's fit a=81.6, b=195 is implausible"
    make_checkpoint(
        tmp_path / "checkpoints" / "alpha.pt",
        seed=0,
        calibration={"method": "temperature", "a": 0.6, "b": 0.0},
        calibration_note=note,
        conformal=conformal,
    )
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "percentile bootstrap over" in captions
    paired = next(d.value for d in at.dataframe if "McNemar test" in d.value.columns)
    assert paired["McNemar test"].iloc[0].startswith("McNemar ")
    assert paired["DeLong test"].iloc[0].startswith("DeLong")
    calibration = next(d.value for d in at.dataframe if "calibration map" in d.value.columns)
    rows = calibration.set_index("model")
    assert rows.loc["alpha", "calibration map"] == f"temperature a=0.6, b=0 ({note})"
    assert 0 <= float(rows.loc["alpha", "coverage per patch"]) <= 1
    assert float(rows.loc["alpha", "target"]) == 0.9
    assert rows.loc["beta", "coverage per patch"] == "n/a"  # an older card: no conformal sets
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "Risk–coverage" in titles


def robustness_titles(at) -> list[str]:
    titles = [
        json.loads(chart.proto.spec)["layout"].get("title", {}).get("text", "")
        for chart in at.get("plotly_chart")
    ]
    return [t for t in titles if "under hed shift" in t]


def test_the_stain_sweep_runs_in_the_background_and_ends_with_figures(app_env):
    """Run: a preview, then the sweep; the panel polls it and draws one figure per metric."""
    at = AppTest.from_file(PAGE, default_timeout=180)
    ok(at.run())
    assert not robustness_titles(at)
    at.multiselect(key="compare_robustness_strengths::hed").set_value([0.1, 0.3])
    at.number_input(key="compare_robustness_n").set_value(96)
    ok(widget(at, "button", "Run the sweep").click().run())
    job = at.session_state["compare_robustness_job"][1]
    job.join(timeout=600)
    assert job.state().stage == "done", job.state().error
    assert job.state().preview.n == 64 and job.state().result.n == 96
    ok(at.run())
    assert len(robustness_titles(at)) == 4
    assert any(m.value.startswith("**Under hed shift") for m in at.markdown)
    assert any(b.label == "Robustness JSON" for b in at.get("download_button"))
    assert not any(b.label == "Cancel the sweep" for b in at.button)  # no longer polling
