"""Caches never lie and never crash: the prediction cache keys on the split's data files, a cache
folder that cannot be written means "no cache" with one notice, a damaged cache file is redone."""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest
from helpers import EXACT, FAKE_WRITERS, make_checkpoint
from PIL import Image

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


# -- the data fingerprint on one open dataset (as a page holds it) --------------------------


def _in_place_same_size_same_times(path) -> None:
    """One byte changed inside the file itself, its mtime put back (``touch -r``, ``cp -p``)."""
    before = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size


def _truncated(path) -> None:
    os.truncate(path, os.stat(path).st_size // 2)


def _replaced_with_old_times(path) -> None:
    """A new file renamed over the old one with the old size and times (rsync -t, tar)."""
    before = os.stat(path)
    fresh = path.with_suffix(".tmp")
    fresh.write_bytes(path.read_bytes())
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(fresh, path)


def _removed(path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "change", [_in_place_same_size_same_times, _truncated, _replaced_with_old_times, _removed]
)
def test_any_change_to_a_file_of_the_split_changes_the_fingerprint_of_the_same_dataset(
    change, fake_idc
):
    ds = open_dataset(fake_idc.root)
    before = {split: evaluate.split_fingerprint(ds, split) for split in ("train", "test", "all")}
    assert before == {s: evaluate.split_fingerprint(ds, s) for s in before}  # stable when unchanged
    test_file = fake_idc.files[ds.meta.at[int(ds.indices(split="test")[0]), "id"]]
    change(test_file)
    after = {split: evaluate.split_fingerprint(ds, split) for split in before}
    assert after["test"] != before["test"] and after["all"] != before["all"]
    assert after["train"] == before["train"]  # IDC splits by patient: no train file changed


def test_a_changed_file_invalidates_the_cache_of_a_dataset_kept_open(fake_idc, tmp_path, counted):
    """Pages keep one dataset object for the session (st.cache_resource): its memoised file
    list must not hide a file that changed since."""
    ckpt = make_checkpoint(tmp_path / "a.pt")
    ds = open_dataset(fake_idc.root)
    evaluate.predict_split(ckpt, ds, split="all", **EXACT)
    evaluate.predict_split(ckpt, ds, split="all", **EXACT)
    assert len(counted) == 1
    _overwrite_first_patch(fake_idc)
    evaluate.predict_split(ckpt, ds, split="all", **EXACT)
    assert len(counted) == 2


def test_several_checkpoints_on_one_split_look_at_the_data_files_once(
    fake_idc, tmp_path, monkeypatch
):
    from core.compare import content_keys, evaluate_checkpoints

    ckpts = [make_checkpoint(tmp_path / f"{name}.pt", seed=k) for k, name in enumerate("abc")]
    ds = open_dataset(fake_idc.root)
    looks = []
    real = type(ds).data_fingerprint
    monkeypatch.setattr(
        type(ds), "data_fingerprint", lambda self, i: looks.append(1) or real(self, i)
    )
    preds = evaluate_checkpoints(ckpts, ds, split="test", **EXACT)
    assert len(looks) == 1
    keys = content_keys(preds)
    assert len(set(keys)) == 3 and len(looks) == 1
    assert content_keys(evaluate_checkpoints(ckpts, ds, split="test", **EXACT)) == keys
