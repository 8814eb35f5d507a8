"""Server memory and page times of the app as visitors use it, in a real browser.

    .venv/bin/python bench/app_memory.py [--sessions 2] [--shots bench/out]

Starts the app the README's way (`.venv/bin/streamlit run streamlit_app.py`, headless, a fresh
port) on an empty temp data root, cache and runs folder, as on a fresh clone or a Cloud restart.
Debian's chromium, driven by Playwright, walks each session through every page: Home, all demo
datasets in the Datasets gallery, Training, Explain with both demo checkpoints × 2 CAM methods
and an uploaded patch, Compare with both checkpoints, a threshold move and the disagreement
CAMs. Session 2 opens while session 1 stays connected. Prints per-step times, server RSS and the
budget ratios of issue 9: peak (VmHWM of the server and its children) ≤ 900 MB for one session,
≤ +150 MB for a second; first page interactive ≤ 3 s after /_stcore/health; Datasets ≤ 3 s;
Explain's first render ≤ 5 s on a cold server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers import CHROMIUM, CHROMIUM_ARGS, IDLE, free_port, settle, wait_healthy  # noqa: E402

BUDGET_MB = {"one session": 900, "second session adds": 150}
SETTLE_PAUSES_S = 1.15  # tests/helpers.py settle(): 150 ms + 2 × 500 ms of fixed waits
BUDGET_S = {"first page interactive": 3, "Datasets": 3, "Explain first render": 5}


def family(pid: int) -> list[int]:
    """``pid`` and all its descendants (training jobs, worker processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def memory_mb(pid: int, field: str) -> float:
    """Sum of ``field`` (VmRSS now, VmHWM peak) over the server and its children, in MB."""
    total = 0
    for member in family(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith(field)), 0
        )
    return total / 1024


class Session:
    """One browser tab; every step is timed from the action to an idle page showing ``expect``."""

    def __init__(self, browser, url: str, server_pid: int, name: str):
        self.page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
        self.url, self.pid, self.name = url, server_pid, name
        self.steps: list[tuple[str, float, float, float]] = []  # step, seconds, RSS, HWM

    def step(self, name: str, action, expect: str) -> float:
        """Seconds until ``expect`` shows on an idle page. settle() then confirms the page stays
        idle (and has no stException); its own fixed pauses are not counted, unless the page
        reran meanwhile: then the step ends when settle does, less those pauses."""
        started = time.perf_counter()
        action()
        self.page.wait_for_timeout(150)  # let the rerun the action triggered start
        self.page.locator(expect).first.wait_for(timeout=180_000)
        self.page.wait_for_function(IDLE, timeout=180_000, polling=100)
        ready = time.perf_counter()
        settle(self.page, expect)
        settled = time.perf_counter()
        stayed_idle = settled - ready < SETTLE_PAUSES_S + 0.5
        seconds = (ready if stayed_idle else settled - SETTLE_PAUSES_S) - started
        self.steps.append(
            (name, seconds, memory_mb(self.pid, "VmRSS"), memory_mb(self.pid, "VmHWM"))
        )
        return seconds

    def nav(self, title: str):
        return lambda: self.page.get_by_role("link", name=title, exact=True).click()

    def choose(self, widget: str, label: str, option: str):
        """Open the select/multiselect labelled ``label`` and click ``option``."""

        def action():
            box = self.page.locator(f"[data-testid='{widget}']").filter(has_text=label).first
            box.locator("input").first.click()  # the box's centre may be a chosen item's chip
            self.page.locator("[role='option']").filter(has_text=option).first.click()
            self.page.keyboard.press("Escape")

        return action


def journey(s: Session, upload: Path, formats: list[str], demo_marker: Path) -> None:
    page = s.page
    s.step("first page interactive", lambda: page.goto(s.url), "text=Look inside binary")
    s.step("Datasets", s.nav("Datasets"), "text=Showing 64 of")
    wait_for_file(demo_marker)  # the first set shows at once, the others from a next click on
    s.step("Datasets: all sets listed", s.nav("Datasets"), "text=Showing 64 of")
    for fmt in formats:  # every demo set (the one already shown reruns nothing)
        s.step(f"Datasets: {fmt}", s.choose("stSelectbox", "Dataset", f"({fmt},"), "text=Showing")
    s.step("Training", s.nav("Training"), "text=Start a run")
    s.step("Explain first render", s.nav("Explain"), "text=P(tumour)")
    s.step(
        "Explain: 2 checkpoints",
        s.choose("stMultiSelect", "Checkpoints", "idc_cnn"),
        "text=P(tumour)",
    )
    s.step(
        "Explain: 2 methods",
        s.choose("stMultiSelect", "Methods", "GradCAMPlusPlus"),
        "text=P(tumour)",
    )
    s.step(
        "Explain: upload source",
        lambda: page.get_by_text("Upload patches").click(),
        "text=Upload PNG",
    )
    s.step(
        "Explain: uploaded patch",
        lambda: page.locator(
            "[data-testid='stFileUploaderDropzoneInput'][accept*='.png']"
        ).set_input_files(upload),
        f"text={upload.name}",
    )
    s.step("Compare + disagreement CAMs", s.nav("Compare"), "text=Grad-CAM, P(tumour)")

    def move_threshold():
        page.locator("[data-testid='stSlider'] input[type='range']").first.focus()
        page.keyboard.press("PageUp")  # one rerun: +10 % of the range

    s.step("Compare: threshold move", move_threshold, "text=@ 0.600")


def wait_for_file(path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.2)


def upload_patch(folder: Path) -> Path:
    """A 96×96 H&E-coloured PNG (pink stroma, purple nuclei), like a patch a visitor uploads."""
    rng = np.random.default_rng(0)
    image = np.empty((96, 96, 3), np.uint8)
    image[:] = (232, 170, 200)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in rng.integers(8, 88, (40, 2)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = (110, 60, 150)
    path = folder / "visitor_patch.png"
    Image.fromarray(image).save(path)
    return path


def start_server(tmp: Path) -> tuple[subprocess.Popen, str, float]:
    env = dict(
        os.environ,
        HISTOLENS_DATA=str(tmp / "data"),
        HISTOLENS_CACHE=str(tmp / "cache"),
        HISTOLENS_RUNS=str(tmp / "runs"),
    )
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "streamlit"), "run", "streamlit_app.py",
         "--server.headless", "true", "--server.port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, server)
    return server, url, time.perf_counter() - started


def report(sessions: list[Session], health_s: float) -> None:
    print(f"server answered /_stcore/health {health_s:.1f} s after launch")
    for s in sessions:
        print(f"\n{s.name}:  {'step':<32} {'seconds':>8} {'RSS MB':>8} {'peak MB':>8}")
        for name, seconds, rss, hwm in s.steps:
            print(f"  {name:<40} {seconds:8.2f} {rss:8.0f} {hwm:8.0f}")
    if not sessions or not sessions[0].steps:
        return
    first = sessions[0].steps[-1][3]
    figures_mb = {"one session": first}
    if len(sessions) > 1:
        figures_mb["second session adds"] = sessions[1].steps[-1][3] - first
    cold = {name: seconds for name, seconds, _, _ in sessions[0].steps}
    print("\nbudget ratios (≤ 1.00 meets the budget):")
    for name, mb in figures_mb.items():
        print(f"  {name:<28} {mb:7.0f} MB / {BUDGET_MB[name]} MB = {mb / BUDGET_MB[name]:.2f}")
    for name, budget in BUDGET_S.items():
        if name in cold:
            print(f"  {name:<28} {cold[name]:7.2f} s  / {budget} s    = {cold[name] / budget:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--shots", type=Path, default=None, help="save a screenshot per session")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from core.data.base import SYNTHETIC_MARKER as MARKER
    from core.data.demo import WRITERS

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        server, url, health_s = start_server(Path(tmp))
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        sessions = []
        try:
            upload = upload_patch(Path(tmp))
            for k in range(args.sessions):
                sessions.append(Session(browser, url, server.pid, f"session {k + 1}"))
                journey(sessions[-1], upload, list(WRITERS), Path(tmp) / "data" / "demo" / MARKER)
                if args.shots:
                    args.shots.mkdir(parents=True, exist_ok=True)
                    sessions[-1].page.screenshot(path=str(args.shots / f"app_memory_{k + 1}.png"))
        finally:
            browser.close()
            server.terminate()
            server.wait(timeout=20)
            report(sessions, health_s)  # the steps done so far, also when one failed


if __name__ == "__main__":
    main()
