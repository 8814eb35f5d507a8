"""RSS of a `streamlit run` process while a real browser browses the demo on the Datasets page.

    /work/venv/bin/python bench/data_app_rss.py [--real-idc ../shared/data/real/idc]

Starts the app on a temp data root holding the demo (plus a link to the real IDC sample when
given), drives Debian's chromium with Playwright through every dataset: gallery pages, colour
statistics, slide mosaic. Prints the app's RSS (VmRSS of the server process) after each step,
and the uncached ``gallery_page`` time (64 patches) per dataset as the reference for paging.
Target from the issue: RSS ≤ 690 MB while browsing, gallery page ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers import CHROMIUM, CHROMIUM_ARGS, free_port, wait_healthy  # noqa: E402

from core.data import list_datasets, open_dataset  # noqa: E402
from core.data.demo import write_demo  # noqa: E402
from core.data.visual import gallery_page  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def gallery_timings(data: Path) -> None:
    print("uncached gallery_page (64 patches), median of 7 pages, 4 threads vs one:")
    for entry in list_datasets(data):
        ds = open_dataset(entry.path)
        medians = {}
        for threads in (4, 1):  # read_threads: the readers' default is 1
            ds.read_threads = threads
            times = []
            for page in range(1, 8):
                started = time.perf_counter()
                gallery_page(ds, page=page + 8 * threads)
                times.append(time.perf_counter() - started)
            medians[threads] = sorted(times)[3] * 1000
        text = "   ".join(f"{t} thread(s) {ms:6.1f} ms" for t, ms in medians.items())
        print(f"  {entry.name:<12} {text}")


def browse(url: str, pid: int, shots: Path) -> list[tuple[str, float]]:
    from playwright.sync_api import sync_playwright

    readings = [("started", rss_mb(pid))]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(url)
        page.get_by_role("link", name="Datasets", exact=True).click(timeout=60_000)
        options = None
        index = 0
        while True:
            page.get_by_text("Showing").first.wait_for(timeout=60_000)
            select = page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").first
            select.click()
            found = page.locator("[role='option']")
            found.first.wait_for()
            options = options or found.all_inner_texts()
            found.nth(index).click()
            name = options[index]
            page.wait_for_timeout(1500)
            page.get_by_text("Showing").first.wait_for(timeout=120_000)
            for _ in range(3):
                page.locator(
                    "[data-testid='stMain'] [data-testid='stNumberInputStepUp']"
                ).first.click()
                page.wait_for_timeout(800)
            readings.append((f"{name}: gallery p1-4", rss_mb(pid)))
            for tab in ("Colour statistics", "Slide mosaic"):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(2500)
                readings.append((f"{name}: {tab}", rss_mb(pid)))
            page.get_by_role("tab", name="Gallery").click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / f"datasets_{index}.png"), full_page=False)
            index += 1
            if index >= len(options):
                break
        browser.close()
    return readings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real-idc", default=str(REPO.parent / "shared" / "data" / "real" / "idc"))
    args = parser.parse_args()
    shots = REPO / "bench" / "out"
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_demo(data / "demo")
        if Path(args.real_idc).is_dir():
            (data / "real").mkdir()
            (data / "real" / "idc").symlink_to(Path(args.real_idc).resolve())
        env = dict(os.environ, HISTOLENS_DATA=str(data), HISTOLENS_CACHE=str(Path(tmp) / "cache"))
        os.environ.update(HISTOLENS_CACHE=env["HISTOLENS_CACHE"])
        gallery_timings(data)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
             "--server.headless", "true", "--server.port", str(port),
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            readings = browse(url, server.pid, shots)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print("streamlit server RSS while browsing:")
    for step, mb in readings:
        print(f"  {mb:7.0f} MB  {step}")
    print(f"  peak {max(mb for _, mb in readings):.0f} MB (target ≤ 690 MB)")


if __name__ == "__main__":
    main()
