"""Caches never lie and never crash: the prediction cache keys on the split's data files, a cache
folder that cannot be written means "no cache" with one notice, a damaged cache file is redone."""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest
from conftest import FAKE_WRITERS
from PIL import Image
from test_evaluate import EXACT, make_checkpoint

from core import evaluate
from core.__main__ import main
from core.data import open_dataset
from core.explain import select_patches


@pytest.fixture
def counted(monkeypatch):
    """Counts real predictions (cache misses)."""
    calls = []
    real = evaluate.predict_indices

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_indices", counting)
    return calls


def _overwrite_first_patch(fake) -> None:
    """New pixels in the file behind the first patch, stamped a second later (a copy made later)."""
    if fake.format == "pcam":
        import h5py

        path = fake.root / "camelyonpatch_level_2_split_train_x.h5"
        with h5py.File(path, "r+") as f:
            f["x"][0] = 255 - f["x"][0]
    else:
        path = sorted(fake.files.values())[0]
        pixels = np.asarray(Image.open(path))
        Image.fromarray(255 - pixels).save(path)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("fmt", sorted(FAKE_WRITERS))
def test_overwritten_data_files_are_never_served_from_the_cache(fmt, tmp_path, counted):
    """In fp32 on the CPU: bf16 (auto on CUDA) rounds this untrained model's near-constant
    outputs so coarsely that one changed patch can give the very same probabilities."""
    fake = FAKE_WRITERS[fmt](tmp_path / fmt)
    ckpt = make_checkpoint(tmp_path / "a.pt")
    first = evaluate.predict_split(ckpt, open_dataset(fake.root), split="all", **EXACT)
    evaluate.predict_split(ckpt, open_dataset(fake.root), split="all", **EXACT)
    assert len(counted) == 1  # the second call came from the cache
    _overwrite_first_patch(fake)
    again = evaluate.predict_split(ckpt, open_dataset(fake.root), split="all", **EXACT)
    assert len(counted) == 2  # recomputed from the new pixels
    assert not np.array_equal(first["prob"].to_numpy(), again["prob"].to_numpy())


def _unwritable_by_file(tmp_path, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("HISTOLENS_CACHE", str(blocker / "cache"))


def _unwritable_read_only(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(evaluate, "write_atomic", refuse)


@pytest.mark.parametrize("make_unwritable", [_unwritable_by_file, _unwritable_read_only])
def test_unwritable_cache_means_no_cache_with_one_notice(
    make_unwritable, demo_root, tmp_path, monkeypatch, caplog, capsys
):
    make_unwritable(tmp_path, monkeypatch)
    monkeypatch.setattr(evaluate, "_UNWRITABLE", set())
    a = make_checkpoint(tmp_path / "a.pt")
    b = make_checkpoint(tmp_path / "b.pt", seed=1)
    data = str(demo_root / "idc")  # IDC: its index and split manifest want the cache too
    with caplog.at_level(logging.WARNING, logger="histolens"):
        assert main(["evaluate", "--checkpoint", str(a), "--data", data, "--bootstrap", "0"]) == 0
        assert "auc" in capsys.readouterr().out
        args = ["compare", "--checkpoints", str(a), str(b), "--data", data, "--bootstrap", "0"]
        assert main(args) == 0
        ds = open_dataset(data)
        preds = evaluate.predict_split(a, ds, split="test")
        chosen = select_patches(ds, "test", None, outcome="TN", preds=preds)
    assert len(chosen) <= len(preds)
    notices = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()


def test_damaged_cache_file_is_recomputed(fake_pcam, tmp_path, counted):
    ckpt = make_checkpoint(tmp_path / "a.pt")
    ds = open_dataset(fake_pcam.root)
    first = evaluate.predict_split(ckpt, ds)
    # the file predict_split wrote: its key holds the device and precision it ran in
    evaluate.prediction_cache_path(ckpt, ds, "test", False, **first.attrs).write_bytes(b"PAR1 x")
    again = evaluate.predict_split(ckpt, ds)
    assert len(counted) == 2 and np.allclose(first["prob"], again["prob"])
