"""Shared fixtures. Every test runs with its data, cache and runs folders in a temp dir, so the
suite never writes into the checkout. Fake data is written on the fly in the real formats."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers import make_checkpoint
from PIL import Image


def pytest_addoption(parser):
    parser.addoption(
        "--like-cuda",
        action="store_true",
        help="run on the CPU with what a CUDA machine takes by default: 'auto' precision is "
        "bf16 autocast and training loads with 2 DataLoader workers (in-process code only; "
        "subprocesses such as `python -m core train` keep the CPU defaults)",
    )


@pytest.fixture(autouse=True)
def _like_cuda(request, monkeypatch):
    """--like-cuda: the precision and worker defaults of a CUDA machine, on the CPU, so the
    paths that differ there (bf16 outputs, worker processes, their shutdown) run here."""
    if not request.config.getoption("--like-cuda"):
        return
    import sys

    import core.device as device

    real_precision, real_workers = device.resolve_precision, device.default_workers

    def precision(requested, dev):
        return "bf16" if requested == "auto" else real_precision(requested, dev)

    for module in list(sys.modules.values()):  # `from core.device import ...` copies included
        if not getattr(module, "__name__", "").startswith("core"):
            continue
        if getattr(module, "resolve_precision", None) is real_precision:
            monkeypatch.setattr(module, "resolve_precision", precision)
        if getattr(module, "default_workers", None) is real_workers:
            monkeypatch.setattr(module, "default_workers", lambda dev: 2)
    import core.evaluate as evaluate

    monkeypatch.setattr(evaluate, "_no_gpu", lambda: False)  # resolved by the patched core.device


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HISTOLENS_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The embedded synthetic demo (all three formats), written once per test session."""
    from core.data.demo import write_demo

    root = tmp_path_factory.mktemp("demo")
    write_demo(root)
    return root


@pytest.fixture
def demo_data(demo_root, tmp_path) -> Path:
    """A data root holding a copy of the demo (``<root>/demo/{pcam,hcd,idc}``)."""
    data = tmp_path / "data"
    shutil.copytree(demo_root, data / "demo")
    return data


@pytest.fixture
def app_env(demo_root, tmp_path, monkeypatch) -> Path:
    """What the page tests open: a data root linking the demo, and two untrained checkpoints
    ``alpha`` and ``beta`` (seeds 0 and 1) trained on its PCam set, in the checkpoints folder
    (``tmp_path / "checkpoints"``). Returns the data root."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "demo").symlink_to(demo_root, target_is_directory=True)
    ckpts = tmp_path / "checkpoints"
    trained_on = {"dataset": str(data / "demo" / "pcam"), "dataset_format": "pcam"}
    make_checkpoint(ckpts / "alpha.pt", seed=0, **trained_on)
    make_checkpoint(ckpts / "beta.pt", seed=1, **trained_on)
    monkeypatch.setenv("HISTOLENS_DATA", str(data))
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(ckpts))
    return data


# -- tiny fake datasets in the real on-disk formats ------------------------------------------


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


@pytest.fixture(params=sorted(FAKE_WRITERS))
def fake_set(request, tmp_path) -> FakeSet:
    """Each reader's tiny fake dataset in turn (the same checks run on every reader)."""
    return FAKE_WRITERS[request.param](tmp_path / request.param)


@pytest.fixture
def fake_pcam(tmp_path) -> FakeSet:
    return write_fake_pcam(tmp_path / "pcam")


@pytest.fixture
def fake_hcd(tmp_path) -> FakeSet:
    return write_fake_hcd(tmp_path / "hcd", "kaggle")


@pytest.fixture
def fake_idc(tmp_path) -> FakeSet:
    return write_fake_idc(tmp_path / "idc")
