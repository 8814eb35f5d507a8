"""Refresh the README screenshots: `python docs/screenshots.py` (about a minute).

Serves the app on the checkout's data and checkpoints (`data/demo`, `checkpoints/`), opens
Datasets, Explain and Compare in Debian's Chromium through Playwright at 1400×1400 and writes
docs/img/<page>.png as 256-colour PNGs (small enough for the repository).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import CHROMIUM, CHROMIUM_ARGS, serve, settle  # noqa: E402

# page link -> text that shows once the page has drawn what the screenshot is for
PAGES = {
    "Datasets": "Showing 64 of",
    "Explain": "Faithfulness",
    "Compare": "Confusion matrices",
}


def shoot(url: str, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url, wait_until="domcontentloaded")
        for link, ready in PAGES.items():
            page.get_by_role("link", name=link, exact=True).click(timeout=60_000)
            settle(page, f"text={ready}", timeout_s=300)
            page.wait_for_timeout(1500)  # images and charts finish drawing
            path = out / f"{link.lower()}.png"
            page.screenshot(path=str(path))
            Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
            print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1400)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with serve(REPO / "data") as url:
        shoot(url, args.out, args.width, args.height)


if __name__ == "__main__":
    main()
