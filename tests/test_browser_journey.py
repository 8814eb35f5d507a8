"""End to end in a real browser: every page's main journey once, failing on any stException.

Local mode: Datasets paging, Explain on an uploaded patch, Compare with a threshold move,
Training start and a live curve tick. Public mode: the banner on every page, and the Training
page refuses to start runs, showing the command line instead.
"""

from __future__ import annotations

import math

import pytest
from helpers import REPO, browser_page, serve, settle
from PIL import Image

from core.checkpoints import read_card
from core.data import open_dataset

pytestmark = pytest.mark.browser


def nav(page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).click(timeout=60_000)


def datasets_paging(page) -> None:
    nav(page, "Datasets")
    settle(page, "text=Showing 64 of")
    page.locator("[data-testid='stMain'] [data-testid='stNumberInputStepUp']").first.click()
    settle(page, "[data-testid='stMain'] input[type='number'][value='2']")


def explain_upload(page, patch) -> None:
    nav(page, "Explain")
    settle(page, "text=P(tumour)")
    page.get_by_text("Upload patches").click()
    settle(page, "text=Upload PNG")
    page.locator("[data-testid='stFileUploaderDropzoneInput'][accept*='.png']").set_input_files(
        patch
    )
    settle(page, f"[data-testid='stImage'] >> text={patch.name}")


def compare_threshold(page) -> None:
    nav(page, "Compare")
    settle(page, "text=Confusion matrices")
    page.locator("[data-testid='stSlider'] input[type='range']").first.focus()
    page.keyboard.press("PageUp")  # +10 % of the range, from the card's threshold
    # the sliders start at each card's threshold (floored to the 0.001 step)
    moved = "|".join(
        f"{math.floor(read_card(path).threshold / 0.001) * 0.001 + 0.1:.3f}".replace(".", r"\.")
        for path in sorted((REPO / "checkpoints").glob("*.pt"))
    )
    settle(page, f"text=/@ ({moved})/")


def training_start_and_tick(page) -> None:
    nav(page, "Training")
    settle(page, "text=Start a run")
    page.get_by_label("Epochs").fill("1")
    page.get_by_text("Advanced").click()
    page.get_by_label("Max batches per epoch (0 = all)").fill("2")
    page.get_by_role("button", name="Start training").click()
    # the runs panel polls the run's files: a curve shows once the first metrics are logged
    settle(page, "[data-testid='stPlotlyChart']", timeout_s=300)


def test_every_page_main_journey_local(demo_data, tmp_path):
    patch = tmp_path / "uploaded_patch.png"
    Image.fromarray(open_dataset(demo_data / "demo" / "pcam").read(0)).save(patch)
    with serve(demo_data) as url, browser_page() as page:
        page.goto(url)
        settle(page, "text=Look inside binary")
        datasets_paging(page)
        explain_upload(page, patch)
        compare_threshold(page)
        training_start_and_tick(page)


def test_public_mode_refuses_training_and_says_nothing_persists(demo_data):
    with serve(demo_data, HISTOLENS_PUBLIC="1") as url, browser_page() as page:
        page.goto(url)
        settle(page, "text=nothing you do here is kept")
        nav(page, "Training")
        settle(page, "text=Training is off on this public deployment")
        assert page.get_by_role("button", name="Start training").count() == 0
        assert page.get_by_text("python -m core train --data data/demo/pcam").count() == 1
        assert page.get_by_text("nothing you do here is kept").count() == 1  # on every page
