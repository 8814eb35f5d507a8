"""AppTest: the Explain page on a demo checkpoint — grid, method switch, uploads, faithfulness."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import train_demo_checkpoint
from PIL import Image

from core.checkpoints import read_card

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest
from drawn import drawn, ok, visit, widget  # noqa: E402 (after the skip)

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
PAGE = str(REPO / "pages" / "explain.py")


@pytest.fixture(scope="session")
def demo_checkpoint(demo_root, tmp_path_factory):
    return train_demo_checkpoint(demo_root, tmp_path_factory.getbasetemp() / "explain_demo_run")


@pytest.fixture
def explain_env(demo_root, demo_checkpoint, tmp_path, monkeypatch):
    """Data root with the demo, and a checkpoints folder holding only the demo checkpoint."""
    shutil.copytree(demo_root, tmp_path / "data" / "demo")
    (tmp_path / "ckpts").mkdir()
    shutil.copy(demo_checkpoint, tmp_path / "ckpts" / "demo_pcam.pt")
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(tmp_path / "ckpts"))
    return tmp_path


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, at.exception
    return at


def pcam(at: AppTest) -> AppTest:
    box = at.selectbox(key="explain_dataset")
    box.select_index(next(i for i, e in enumerate(box.options) if "pcam" in e)).run()
    assert not at.exception, at.exception
    return at


def image_urls(at: AppTest) -> list[str]:
    return [url for image in at.image for url in image.value]


def test_page_shows_the_grid_and_switching_method_changes_the_overlays(explain_env):
    at = pcam(page())
    assert at.multiselect(key="explain_models").value == ["demo_pcam"]
    per_page = at.selectbox(key="explain_per_page").value
    captions = [c for image in at.image for c in image.captions]
    assert len(captions) == 2 * per_page  # original + one model × method column per patch
    assert sum("demo_pcam · gradcam — P(tumour)" in c for c in captions) == per_page
    before = image_urls(at)
    at.multiselect(key="explain_methods").set_value(["layercam"]).run()
    assert not at.exception
    after = image_urls(at)
    assert len(after) == len(before)
    originals = set(before) & set(after)
    assert len(originals) == per_page  # the originals stay, every overlay changed
    at.multiselect(key="explain_methods").set_value(["gradcam", "eigencam"]).run()
    assert len(image_urls(at)) == 3 * per_page
    assert [b.label for b in at.get("download_button")][:1] == ["⬇️ Shown overlays (PNG zip)"]
    at.button(key="explain_enlarge_0").click().run()
    assert not at.exception
    enlarged = [c for image in at.image for c in image.captions if c.endswith("(original)")]
    assert len(enlarged) == 1 and len(image_urls(at)) == 3 * per_page + 3


def test_outcome_filter_and_faithfulness_table(explain_env):
    at = pcam(page())
    at.selectbox(key="explain_outcome").set_value("TP").run()
    assert not at.exception
    assert all("→ tumour" in c for image in at.image for c in image.captions if "P(tumour)" in c)
    at.number_input(key="explain_faith_n").set_value(3).run()
    at.button(key="explain_faith_run").click().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["method"]) == ["gradcam"] and table["pointing-game hit rate ↑"].notna().all()


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_uploads_corrupt_file_shows_an_error_and_good_files_are_explained(explain_env):
    at = page()
    at.radio(key="explain_source").set_value("Upload patches").run()
    assert not at.exception
    good = _png(np.random.default_rng(0).integers(0, 256, (120, 80, 3), dtype=np.uint8))
    at.file_uploader(key="explain_uploads").set_value(
        [
            ("corrupt.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"),
            ("big.png", good, "image/png"),
        ]
    ).run()
    assert not at.exception
    assert any("corrupt.png" in e.value for e in at.error)
    size = read_card(explain_env / "ckpts" / "demo_pcam.pt").input_size
    notice = f"resized to the model's {size}×{size} input"
    assert any("big.png" in i.value and notice in i.value for i in at.info)
    captions = [c for image in at.image for c in image.captions]
    assert "big.png" in captions and not any("corrupt" in c for c in captions)
    at.file_uploader(key="explain_uploads").set_value(
        [("only_bad.png", b"GIF89a" + b"\0" * 40, "image/png")]
    ).run()
    assert not at.exception
    assert any("only_bad.png" in e.value for e in at.error)
    assert not at.image


def test_app_routes_to_explain(explain_env):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/explain.py").run()
    assert not at.exception
    assert at.title[0].value == "🔥 Explain"


def test_choices_and_uploads_survive_source_switches_and_page_visits(explain_env):
    """Issue 13, item 3: methods, the outcome filter and uploads were lost on the way."""
    at = visit(ok(AppTest.from_file(APP, default_timeout=180).run()), "explain")
    drawn(at, widget(at, "multiselect", "Methods").set_value(["gradcam", "eigencam"]))
    drawn(at, widget(at, "selectbox", "Outcome").set_value("TP"))
    choose_source(at, "Upload")
    upload = [("mine.png", _png(np.full((96, 96, 3), 200, np.uint8)), "image/png")]
    drawn(at, widget(at, "file_uploader", "Upload").set_value(upload))
    assert "mine.png" in captions(at)

    choose_source(at, "Dataset")
    assert widget(at, "selectbox", "Outcome").value == "TP"
    visit(at, "home")
    visit(at, "explain")
    assert widget(at, "multiselect", "Methods").value == ["gradcam", "eigencam"]
    assert widget(at, "selectbox", "Outcome").value == "TP"
    choose_source(at, "Upload")
    assert "mine.png" in captions(at), "the uploads were dropped"


def choose_source(at: AppTest, start: str) -> None:
    source = widget(at, "radio", "Patches from")
    drawn(at, source.set_value(next(o for o in source.options if o.startswith(start))))


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def test_explain_skips_a_broken_checkpoint_by_default_and_names_it_when_chosen(explain_env):
    (explain_env / "ckpts" / "0-broken.pt").write_bytes(b"not a checkpoint")  # sorts first
    at = page()
    box = at.multiselect(key="explain_models")
    assert box.value == ["demo_pcam"]
    assert not at.error
    box.select("0-broken").run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "0-broken" in at.error[0].value


# --- Can I trust these maps? (core.sanity) ---------------------------------------------------


def run_sanity_check(at):
    at.selectbox(key="explain_per_page").set_value(4).run()
    at.number_input(key="explain_sanity_seeds").set_value(1).run()
    at.button(key="explain_sanity_run").click().run()
    assert not at.exception, at.exception
    return at


@pytest.mark.usefixtures("explain_env")
def test_the_section_shows_curves_verdicts_and_maps_before_and_after():
    at = run_sanity_check(pcam(page()))
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
    at = run_sanity_check(at)
    verdicts = next(t.value for t in at.dataframe if "verdict" in t.value.columns)
    assert "scorecam" not in set(verdicts["method"])
    assert any("Not on a public server" in c.value for c in at.caption)


def test_the_stain_slider_shows_the_shifted_patch_calls_and_map_stability(explain_env):
    at = pcam(page())
    grid = len(image_urls(at))
    ok(at.toggle(key="explain_stain_on").set_value(True).run())
    captions = [c for image in at.image for c in image.captions]
    assert len(image_urls(at)) == grid + 4  # original, shifted, the map before and after
    assert any(c.startswith("hed at 0.3") for c in captions)
    stability = [c for c in captions if "gradcam after (Spearman ρ" in c]
    assert len(stability) == 1 and -1 <= float(stability[0].split("ρ ")[1].split()[0]) <= 1
    assert any(c.endswith("gradcam before") for c in captions)  # ρ once, on the map it compares
    said = [m.value for m in at.markdown if m.value.startswith("**demo_pcam**: P(tumour)")]
    assert len(said) == 1 and " → " in said[0]
    shifted_before = image_urls(at)
    ok(at.select_slider(key="explain_stain_strength::hed").set_value(0.5).run())
    # new: the shifted patch and the map after; the original and its map stay as they were
    assert len(set(image_urls(at)) - set(shifted_before)) == 2
    ok(at.radio(key="explain_stain_shift").set_value("reinhard").run())
    assert any(c.startswith("reinhard at") for c in (c for i in at.image for c in i.captions))
