"""Helpers shared by several test modules (not a test module; imported as ``helpers``, since
pytest puts tests/ on sys.path; bench/ and docs/ scripts put it there themselves).

No test module imports another: what more than one needs lives here, as torchvision keeps
test/common_utils.py. Import-light: torch, h5py and core.train are imported by the helpers that
use them, so conftest.py, bench/ and docs/ import this module without loading torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from core.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent

# -- checkpoints and training runs -----------------------------------------------------------

# Exact comparisons of two computations run both on the CPU in fp32: on a GPU, "auto" means bf16
# autocast (probabilities move by up to ~1e-4 on these untrained models) and fp32 convolutions
# use TF32, each differing between memory formats.
EXACT = {"device": "cpu", "precision": "fp32"}
SHIPPED_DEMO_CHECKPOINT = REPO / "checkpoints" / "demo_pcam_hcd_cnn.pt"


def make_checkpoint(path, seed=0, arch="idc_cnn", **card_fields):
    """An untrained (randomly initialised, seeded) model saved as a real checkpoint."""
    import torch

    from core.checkpoints import ModelCard, save_checkpoint
    from core.models import build_model

    torch.manual_seed(seed)
    model, _ = build_model(arch)
    return save_checkpoint(path, model, ModelCard.for_model(arch, **card_fields))


def train_demo_checkpoint(demo_root: Path, out_dir: Path) -> Path:
    """A checkpoint trained on the demo PCam train split: the one shipped in checkpoints/ when
    present (the demo generator is deterministic, so its test split is this session's), else
    hcd_cnn trained 3 epochs at 64 px here (≈15–60 s on 2 CPU cores), once per session."""
    from core.checkpoints import read_card
    from core.train import TrainConfig, fit

    if SHIPPED_DEMO_CHECKPOINT.exists():
        card = read_card(SHIPPED_DEMO_CHECKPOINT)
        if card.synthetic_data and card.dataset_format == "pcam":
            return SHIPPED_DEMO_CHECKPOINT
    best = out_dir / "best.pt"
    if not best.exists():
        cfg = TrainConfig(
            data=str(demo_root / "pcam"),
            model="hcd_cnn",
            epochs=3,
            img_size=64,
            device="cpu",
            seed=0,
        )
        fit(cfg, out_dir)
    return best


def write_idc_tree(root, patients: int, per_class: int = 4, size: int = 50):
    """A tiny IDC tree (<patient>/<0|1>/<patient>_idx5_x.._y.._classC.png): tumour patches dark,
    normal patches bright, so a model that reads brightness separates them perfectly."""
    rng = np.random.default_rng(0)
    for p in range(patients):
        patient = str(9000 + p)
        for label in (0, 1):
            folder = root / patient / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                base = 60 if label else 200
                pixels = rng.integers(base - 20, base + 20, (size, size, 3), dtype=np.uint8)
                name = f"{patient}_idx5_x{50 * k}_y{50 * label}_class{label}.png"
                Image.fromarray(pixels).save(folder / name)
    return root


def quick(data, **overrides) -> TrainConfig:
    """A training config that runs in seconds: one epoch of three batches of 16."""
    from core.train import TrainConfig

    settings = dict(data=str(data), epochs=1, batch_size=16, limit_batches=3, log_every=2)
    return TrainConfig(**{**settings, **overrides})


# -- forged files in the real formats --------------------------------------------------------


def forged_png(h: int, w: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose header claims h×w (with valid CRCs) but holds one row of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\0" + b"\x80" * 3 * min(w, 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def forged_tiff(h: int, w: int, bits: int = 8, sample_format: int = 1) -> bytes:
    """An uncompressed grey TIFF whose tags claim h×w but which holds 64 bytes
    (``sample_format`` 3 with 32 bits: float32 pixels, Pillow's mode F)."""
    tags = [  # (tag, type, value): SHORT = 3, LONG = 4
        (256, 4, w),
        (257, 4, h),
        (258, 3, bits),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),  # strip offset, filled below
        (277, 3, 1),
        (278, 4, h),
        (279, 4, h * w * bits // 8),
        (339, 3, sample_format),
    ]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + b"\x80" * 64


def rewrite_h5(path: Path, key: str, **kwargs) -> None:
    """Replace the h5 file at ``path`` by one holding only ``key``: a dataset made with
    ``kwargs`` (h5py's create_dataset), or a group with ``group=True``."""
    import h5py

    path.unlink()
    with h5py.File(path, "w") as f:
        if kwargs.pop("group", False):
            f.create_group(key)
        else:
            f.create_dataset(key, **kwargs)


# -- a real browser on `streamlit run` --------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# True once Streamlit has finished a run: no running indicator, no stale (greyed) element.
IDLE = """() => !document.querySelector(
    "[data-testid^='stStatusWidgetRunning'], [data-stale='true'], [data-testid='stSpinner']")"""


@contextlib.contextmanager
def serve(data_root: Path, **env: str):
    """`streamlit run streamlit_app.py` on a fresh port over ``data_root``; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
         "--server.headless", "true", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        cwd=REPO,
        env=dict(os.environ, HISTOLENS_DATA=str(data_root), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited early: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health in {timeout}s")


@contextlib.contextmanager
def browser_page():
    """A fresh Chromium page (Debian's chromium through Playwright)."""
    ensure_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.set_default_timeout(120_000)  # a loaded 2-core machine reruns pages slowly
            yield page
        finally:
            browser.close()


def ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} missing and not root with apt-get: install Debian's chromium")
    subprocess.run(
        "apt-get update && apt-get install -y chromium", shell=True, check=True, timeout=600
    )


def settle(page, expect: str, timeout_s: float = 180) -> None:
    """Wait until ``expect`` (a Playwright selector) shows and the app stays idle (two checks
    half a second apart: a page may rerun itself right after a first render); no exception."""
    page.wait_for_timeout(150)  # let the rerun an action triggered start
    for _ in range(2):
        page.locator(expect).first.wait_for(timeout=timeout_s * 1000)
        page.wait_for_function(IDLE, timeout=timeout_s * 1000, polling=100)
        page.wait_for_timeout(500)
    page.locator(expect).first.wait_for(timeout=timeout_s * 1000)
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.first.inner_text()


# -- fake datasets in the real formats (tiny h5, tif + csv, png tree) -------------------------


@dataclass
class FakeSet:
    """What a fake dataset holds, so tests compare the reader against the truth."""

    format: str
    root: Path
    image_size: tuple[int, int]
    pixels: dict[str, np.ndarray] = field(default_factory=dict)  # id -> uint8 H×W×3
    labels: dict[str, int] = field(default_factory=dict)  # id -> 0/1 (-1 unlabelled)
    patients: dict[str, str] = field(default_factory=dict)  # id -> patient (IDC)
    files: dict[str, Path] = field(default_factory=dict)  # id -> image file (HCD, IDC)


def _random_patch(rng, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_fake_pcam(root: Path, sizes=(("train", 8), ("valid", 4), ("test", 4)), seed=0):
    import h5py

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    fake = FakeSet("pcam", root, (96, 96))
    for split, n in sizes:
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8)
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y.reshape(-1, 1, 1, 1))
        for i in range(n):
            fake.pixels[f"{split}_{i}"] = x[i]
            fake.labels[f"{split}_{i}"] = int(y[i])
    return fake


def _hcd_id(k: int) -> str:
    return hashlib.sha1(f"fake-{k}".encode()).hexdigest()


def write_fake_hcd(root: Path, layout: str = "kaggle", n: int = 12, n_test: int = 3, seed=1):
    """Kaggle layout (train/ + train_labels.csv + test/ + sample_submission.csv) or flat."""
    rng = np.random.default_rng(seed)
    image_dir = root / "train" if layout == "kaggle" else root
    image_dir.mkdir(parents=True, exist_ok=True)
    fake = FakeSet("hcd", root, (96, 96))
    rows = []
    for k in range(n):
        patch_id, patch = _hcd_id(k), _random_patch(rng, 96, 96)
        Image.fromarray(patch).save(image_dir / f"{patch_id}.tif")
        fake.pixels[patch_id], fake.labels[patch_id] = patch, k % 2
        fake.files[patch_id] = image_dir / f"{patch_id}.tif"
        rows.append(f"{patch_id},{k % 2}")
    csv_name = "train_labels.csv" if layout == "kaggle" else "labels.csv"
    (root / csv_name).write_text("id,label\n" + "\n".join(rows) + "\n")
    if layout == "kaggle" and n_test:
        (root / "test").mkdir()
        test_ids = [_hcd_id(1000 + k) for k in range(n_test)]
        for patch_id in test_ids:
            patch = _random_patch(rng, 96, 96)
            Image.fromarray(patch).save(root / "test" / f"{patch_id}.tif")
            fake.pixels[patch_id], fake.labels[patch_id] = patch, -1
            fake.files[patch_id] = root / "test" / f"{patch_id}.tif"
        (root / "sample_submission.csv").write_text(
            "id,label\n" + "\n".join(f"{i},0" for i in test_ids) + "\n"
        )
    return fake


def write_fake_idc(root: Path, n_patients: int = 4, grid: int = 3, seed=2):
    """<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png; the last column is an edge
    patch 50×20, as at real slide borders. Patient k has a positive share rising with k."""
    rng = np.random.default_rng(seed)
    fake = FakeSet("idc", root, (50, 50))
    for p in range(n_patients):
        patient = str(10000 + p)
        for row in range(grid):
            for col in range(grid):
                label = int((row * grid + col + p) % (p + 2) == 0)
                width = 20 if col == grid - 1 else 50
                patch = _random_patch(rng, 50, width)
                name = f"{patient}_idx5_x{col * 50 + 1}_y{row * 50 + 1}_class{label}"
                folder = root / patient / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(patch).save(folder / f"{name}.png")
                fake.pixels[name], fake.labels[name] = patch, label
                fake.patients[name], fake.files[name] = patient, folder / f"{name}.png"
    return fake


FAKE_WRITERS = {
    "pcam": lambda root: write_fake_pcam(root),
    "hcd-kaggle": lambda root: write_fake_hcd(root, "kaggle"),
    "hcd-flat": lambda root: write_fake_hcd(root, "flat"),
    "idc": lambda root: write_fake_idc(root),
}
