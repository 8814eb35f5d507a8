"""Real-browser smoke test: `streamlit run` + Playwright driving Debian's chromium.

No browser is downloaded: the set-up uses /usr/bin/chromium, installing it with apt when it is
missing and we are root; otherwise the test skips with the reason.
"""

from __future__ import annotations

import re

import pytest
from helpers import browser_page, make_checkpoint, serve, settle

pytestmark = pytest.mark.browser


@pytest.fixture
def app_url(demo_data):
    with serve(demo_data) as url:
        yield url


def test_datasets_page_shows_gallery_images(app_url):
    with browser_page() as page:
        page.goto(app_url, wait_until="domcontentloaded")
        # exact: Streamlit lists pages/ as lower-case "datasets" until st.navigation runs
        page.get_by_role("link", name="Datasets", exact=True).click(timeout=60_000)
        page.get_by_text("Showing 64 of").first.wait_for(timeout=60_000)
        gallery = page.locator("[data-testid='stImage'] img")
        gallery.nth(63).wait_for(timeout=60_000)
        assert gallery.count() >= 64
        assert page.get_by_text("Synthetic demo data").count() >= 1
        assert page.get_by_role("link", name="Home", exact=True).count() == 1


def test_a_deep_link_as_a_cold_servers_first_request_opens_inside_the_router(demo_data):
    """A shared link to /training, as the first request a (re)started server gets, ran the page
    file on its own in Streamlit's legacy pages/ mode: file names as navigation ("streamlit
    app", "home", "training"), none of streamlit_app.py."""
    with serve(demo_data) as url, browser_page() as page:
        page.goto(url + "/training", wait_until="domcontentloaded")
        settle(page, "text=Start a run")
        nav = page.locator("[data-testid='stSidebarNav']").inner_text()
        assert "Embeddings" in nav and "streamlit app" not in nav, nav
        assert page.get_by_text("Page not found").count() == 0
        assert page.url.rstrip("/").endswith("/training")


@pytest.fixture
def compare_url(demo_data, tmp_path):
    """The app over the demo with two (untrained, seeded) checkpoints to compare."""
    make_checkpoint(tmp_path / "ckpts" / "alpha.pt", seed=0)
    make_checkpoint(tmp_path / "ckpts" / "beta.pt", seed=1)
    with serve(demo_data, HISTOLENS_CHECKPOINTS=str(tmp_path / "ckpts")) as url:
        yield url


def drawn_thresholds(page) -> dict[str, float]:
    """{model: value} of the per-model threshold sliders, as the browser draws them."""
    out = {}
    for slider in page.locator("[data-testid='stSlider']").all():
        label = slider.locator("label").first.inner_text()
        if label.startswith("Threshold ·"):
            thumb = slider.locator("[data-testid='stSliderThumbValue']").first.inner_text()
            out[label.split("·", 1)[1].strip()] = float(thumb)
    return out


def applied_thresholds(page) -> dict[str, float]:
    """{model: threshold} the confusion matrices are drawn at ("alpha @ 0.787")."""
    texts = page.locator("[data-testid='stMarkdownContainer'] p").all_inner_texts()
    found = (re.fullmatch(r"(\S+) @ ([0-9.]+)", t.strip()) for t in texts)
    return {m[1]: float(m[2]) for m in found if m}


def test_compare_thresholds_round_trip_shows_what_it_applies(compare_url):
    """Shared threshold on, "sensitivity ≥ 0.90", shared off: the sliders the user sees are
    the thresholds the matrices use, and nudging one moves only that model (issue 13, item 1:
    the sliders showed 0.000 while the matrices said @0.787 / @0.756)."""
    with browser_page() as page:
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(compare_url, wait_until="domcontentloaded")
        page.get_by_role("link", name="Compare", exact=True).click(timeout=60_000)
        matrices = "text=Confusion matrices"
        settle(page, matrices)
        page.get_by_text("One shared threshold", exact=True).click()
        settle(page, "text=Threshold (all models)")
        page.get_by_role("button", name=re.compile("Choose thresholds for sensitivity")).click()
        settle(page, matrices)
        page.get_by_text("One shared threshold", exact=True).click()
        settle(page, "text=Threshold · alpha")
        applied = applied_thresholds(page)
        assert sorted(applied) == ["alpha", "beta"]
        assert drawn_thresholds(page) == applied

        slider = page.locator("[data-testid='stSlider']", has_text="Threshold · alpha")
        slider.get_by_role("slider").press("ArrowRight")  # one step: +0.001
        settle(page, matrices)
        after = applied_thresholds(page)
        assert drawn_thresholds(page) == after
        assert after["alpha"] == pytest.approx(applied["alpha"] + 0.001)
        assert after["beta"] == applied["beta"]


def test_a_checkpoint_over_the_upload_cap_is_refused_before_it_is_sent(compare_url):
    """Issue 22, item 3: the checkpoint uploader said 100 MB while the server takes 20 MB
    (.streamlit/config.toml), so a 25 MB file failed with only "AxiosError: Request failed with
    status code 413". It states the server's cap, and refuses a larger file itself, in one
    line, before anything is sent."""
    from core.checkpoints import MAX_UPLOADED_CHECKPOINT_BYTES

    with browser_page() as page:
        page.goto(compare_url, wait_until="domcontentloaded")
        page.get_by_role("link", name="Compare", exact=True).click(timeout=60_000)
        settle(page, "text=Confusion matrices")
        page.get_by_text("Bring your own checkpoint").click()
        uploader = page.locator("[data-testid='stFileUploader']").first
        cap_mb = MAX_UPLOADED_CHECKPOINT_BYTES // 2**20
        assert f"{cap_mb}MB per file" in uploader.inner_text()
        too_big = {"name": "big.pt", "mimeType": "application/octet-stream",
                   "buffer": bytes(MAX_UPLOADED_CHECKPOINT_BYTES + 2**20)}  # fmt: skip
        uploader.locator("input[type='file']").set_input_files(files=[too_big])
        refusal = page.get_by_text(re.compile(r"File must be .* or smaller"))
        refusal.first.wait_for(timeout=60_000)
        assert refusal.count() == 1 and page.get_by_text("413").count() == 0


def overlapping_or_outside(page, section: str) -> list[str]:
    """Images under the heading ``section`` that overlap another one or run past the main
    block's right edge, as the browser lays them out."""
    boxes = page.evaluate(
        """(section) => {
          const heads = [...document.querySelectorAll('h2, h3')];
          const head = heads.find(h => h.innerText.trim() === section);
          const main = document.querySelector("[data-testid='stMainBlockContainer']");
          const right = main.getBoundingClientRect().right;
          const below = [...document.querySelectorAll("[data-testid='stImage'] img")]
            .filter(img => head.compareDocumentPosition(img) & Node.DOCUMENT_POSITION_FOLLOWING)
            .map(img => img.getBoundingClientRect());
          return {right, boxes: below.map(b => [b.left, b.top, b.right, b.bottom])};
        }""",
        section,
    )
    right, rects = boxes["right"], boxes["boxes"]
    problems = [
        f"image {i} ends at {r[2]:.0f} > {right:.0f}"
        for i, r in enumerate(rects)
        if r[2] > right + 1
    ]
    for i, a in enumerate(rects):
        for j, b in enumerate(rects[i + 1 :], i + 1):
            if min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1:
                problems.append(f"images {i} and {j} overlap")
    return problems


@pytest.mark.parametrize("width", [1400, 800])
def test_the_disagreement_browser_with_cams_fits_the_page(compare_url, width):
    """Issue 22, item 5: with "Grad-CAM per model" on (the default), the disagreement browser's
    images overlapped and its row ran past the page edge, at 1400 and 800 px."""
    with browser_page() as page:
        page.set_viewport_size({"width": width, "height": 4000})
        page.goto(compare_url, wait_until="domcontentloaded")
        page.get_by_role("link", name="Compare", exact=True).click(timeout=60_000)
        settle(page, "text=/alpha · Grad-CAM — P\\(tumour\\)/", timeout_s=400)
        page.wait_for_timeout(2000)  # images finish loading and the layout settles
        assert page.locator("[data-testid='stException']").count() == 0
        assert overlapping_or_outside(page, "Disagreements") == []
