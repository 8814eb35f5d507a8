"""`python -m core data check`: every patch read, the unreadable listed with the reader's own
reason, and the exclusion list every reader honours (core.data.check, core.data.exclusions).

Damage is done in the real formats: a PCam row whose gzip chunk no longer inflates, a TIFF and a
PNG cut in half.
"""

from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest
from helpers import EXACT, make_checkpoint, quick, write_fake_hcd, write_fake_idc, write_idc_tree
from PIL import Image

from core import run_folder
from core.__main__ import main
from core.data import DatasetError, open_dataset, summarize
from core.data.check import check_dataset, exclude_unreadable
from core.data.exclusions import list_path

pytestmark = pytest.mark.timeout(300)


def damage_one(fake) -> str:
    """Damage one patch of ``fake`` in place; returns its id."""
    if fake.format == "pcam":
        path = fake.root / "camelyonpatch_level_2_split_train_x.h5"
        with h5py.File(path, "r") as f:
            chunk = f["x"].id.get_chunk_info(3)  # row 3: the fake writes one chunk per row
        with open(path, "r+b") as fh:
            fh.seek(chunk.byte_offset)
            fh.write(b"\0" * chunk.size)  # not a zlib stream any more
        return "train_3"
    patch_id, path = sorted(fake.files.items())[1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return patch_id


def readers_reason(root, patch_id: str) -> tuple[int, str, str]:
    """(position, split, message) of the reader's own refusal of ``patch_id``."""
    ds = open_dataset(root, exclusions=False)
    i = int(np.flatnonzero(ds.meta["id"] == patch_id)[0])
    with pytest.raises(DatasetError) as err:
        ds.read_batch([i])
    return i, ds.meta.at[i, "split"], str(err.value)


def check_json(root, capsys, *options: str) -> tuple[int, dict]:
    capsys.readouterr()  # what earlier commands printed
    code = main(["data", "check", str(root), "--json", *options])
    return code, json.loads(capsys.readouterr().out)


def test_a_damaged_patch_is_listed_with_the_readers_reason(fake_set, capsys):
    code, clean = check_json(fake_set.root, capsys)
    assert code == 0 and clean["unreadable"] == [] and clean["n"] == len(fake_set.pixels)
    patch_id = damage_one(fake_set)
    i, split, reason = readers_reason(fake_set.root, patch_id)
    code, found = check_json(fake_set.root, capsys)
    assert code == 1
    assert found["unreadable"] == [{"index": i, "id": patch_id, "split": split, "reason": reason}]
    assert main(["data", "check", str(fake_set.root)]) == 1
    out = capsys.readouterr().out
    assert f"{patch_id}  {reason}" in out and "--exclude" in out


OFF_FORMAT = {  # files that decode, but not into what the set holds
    "hcd-smaller-tif": (
        write_fake_hcd,
        lambda path: Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(path),
        "is 50×50, not the set's 96×96",
    ),
    "idc-16-bit-png": (
        write_fake_idc,
        lambda path: Image.fromarray(np.zeros((50, 50), np.uint16)).save(path),
        "expected 8-bit RGB",
    ),
}


@pytest.mark.parametrize("case", sorted(OFF_FORMAT))
def test_an_off_format_patch_is_listed_with_the_readers_reason(case, tmp_path, capsys):
    writer, rewrite, expected = OFF_FORMAT[case]
    fake = writer(tmp_path / "set")
    patch_id, path = sorted(fake.files.items())[0]
    rewrite(path)
    _, _, reason = readers_reason(fake.root, patch_id)
    code, found = check_json(fake.root, capsys)
    assert code == 1 and expected in reason
    assert [(u["id"], u["reason"]) for u in found["unreadable"]] == [(patch_id, reason)]


def test_an_excluded_patch_is_gone_for_every_reader(fake_set, capsys):
    before = open_dataset(fake_set.root)
    patch_id = damage_one(fake_set)
    code, found = check_json(fake_set.root, capsys, "--exclude")
    assert code == 0 and found["exclusions"] == str(list_path(fake_set.root))
    ds = open_dataset(fake_set.root)
    assert len(ds) == len(before) - 1 and ds.excluded == (patch_id,)
    assert patch_id not in set(ds.meta["id"]) and ds.problems == before.problems
    for split in ("train", "valid", "test"):
        assert patch_id not in set(ds.meta["id"].iloc[ds.indices(split=split)])
    every = ds.read_batch(np.arange(len(ds)))  # the damaged patch no longer stops a batch
    for i, patch_id_i in enumerate(ds.meta["id"]):  # every other patch is still itself
        h, w = fake_set.pixels[patch_id_i].shape[:2]
        np.testing.assert_array_equal(every[i, :h, :w], fake_set.pixels[patch_id_i])
    # positions moved: a cache keyed by the fingerprint must not serve the old ones
    everything = np.arange(len(before))
    assert ds.data_fingerprint(everything[:-1]) != before.data_fingerprint(everything[:-1])
    assert summarize(ds)["excluded"] == 1 and summarize(before)["excluded"] == 0
    assert main(["data", "summary", str(fake_set.root)]) == 0
    assert "excluded: 1 patch, unreadable when checked" in capsys.readouterr().out
    assert len(open_dataset(fake_set.root, exclusions=False)) == len(before)


def test_evaluation_of_a_split_with_an_excluded_patch_runs(tmp_path, capsys):
    from core.evaluate import open_dataset_for, predict_split

    fake = write_fake_idc(tmp_path / "idc")
    patch_id = damage_one(fake)
    _, split, _ = readers_reason(fake.root, patch_id)
    ckpt = make_checkpoint(tmp_path / "m.pt", dataset=str(fake.root), dataset_format="idc")
    ds, _ = open_dataset_for(fake.root, [ckpt])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        predict_split(ckpt, ds, split=split, **EXACT)
    assert main(["data", "check", str(fake.root), "--exclude"]) == 0
    ds, _ = open_dataset_for(fake.root, [ckpt])
    preds = predict_split(ckpt, ds, split=split, **EXACT)
    assert len(preds) == len(ds.indices(split=split)) and patch_id not in set(preds["id"])


def test_a_run_folder_records_the_excluded_count(tmp_path):
    from core.train import fit

    root = write_idc_tree(tmp_path / "idc", patients=6)
    first = sorted(root.glob("*/*/*.png"))[0]
    first.write_bytes(first.read_bytes()[:100])
    assert main(["data", "check", str(root), "--exclude"]) == 0
    fit(quick(root, limit_batches=1), tmp_path / "run")
    status = run_folder.read_status(tmp_path / "run")
    assert status["state"] == "finished" and status["excluded_patches"] == 1


def test_a_replaced_file_brings_its_patch_back(tmp_path, capsys):
    fake = write_fake_idc(tmp_path / "idc")
    patch_id = damage_one(fake)
    assert main(["data", "check", str(fake.root), "--exclude"]) == 0
    Image.fromarray(fake.pixels[patch_id]).save(fake.files[patch_id])
    ds = open_dataset(fake.root)
    assert len(ds) == len(fake.pixels) and ds.excluded == ()
    assert [p for p in ds.problems if "changed since the check" in p and patch_id in p]
    code, found = check_json(fake.root, capsys, "--exclude")  # a clean check clears the list
    assert code == 0 and found["exclusions"] is None and found["excluded_before"] == 0
    assert not list_path(fake.root).exists()


LISTS = {
    "not-json": lambda path: path.write_text("{ this is not json"),
    "binary": lambda path: path.write_bytes(bytes(range(256))),
    "a-list": lambda path: path.write_text("[1, 2, 3]"),
    "other-kind": lambda path: path.write_text(json.dumps({"kind": "x", "version": 1})),
    "another-dataset": lambda path: _rewrite(path, root="/elsewhere/idc"),
    "another-format": lambda path: _rewrite(path, format="hcd"),
    "damaged-entries": lambda path: _rewrite(path, patches=[{"id": 3}]),
    "a-folder": lambda path: (path.unlink(), path.mkdir()),
}


def _rewrite(path, **fields) -> None:
    found = json.loads(path.read_text())
    path.write_text(json.dumps({**found, **fields}))


@pytest.mark.parametrize("case", sorted(LISTS))
def test_a_damaged_or_foreign_list_is_ignored_with_one_notice(case, tmp_path):
    fake = write_fake_idc(tmp_path / "idc")
    damage_one(fake)
    assert main(["data", "check", str(fake.root), "--exclude"]) == 0
    path = list_path(fake.root)
    LISTS[case](path)
    ds = open_dataset(fake.root)  # opens: a list never stops a dataset from opening
    assert len(ds) == len(fake.pixels) and ds.excluded == ()
    notices = [p for p in ds.problems if str(path) in p]
    assert len(notices) == 1 and "ignored" in notices[0] and "\n" not in notices[0]


def test_a_list_that_excludes_every_patch_is_one_line(tmp_path):
    fake = write_fake_idc(tmp_path / "idc", n_patients=1, grid=1)
    damage = next(iter(fake.files.values()))
    damage.write_bytes(damage.read_bytes()[:60])
    assert main(["data", "check", str(fake.root), "--exclude"]) == 0
    with pytest.raises(DatasetError, match="every patch is on the exclusion list") as err:
        open_dataset(fake.root)
    assert "\n" not in str(err.value)


def test_worker_processes_find_what_one_process_finds(tmp_path):
    fake = write_fake_idc(tmp_path / "idc")
    paths = sorted(fake.files.values())
    for path in (paths[0], paths[-1]):
        path.write_bytes(path.read_bytes()[:80])
    one = check_dataset(fake.root, workers=1)
    forked = check_dataset(fake.root, workers=2)  # this thread alone: forked workers
    spawned = []  # another thread alive: spawned workers (a server's case)
    thread = threading.Thread(target=lambda: spawned.append(check_dataset(fake.root, workers=2)))
    thread.start()
    thread.join()
    assert len(one.unreadable) == 2
    assert one.unreadable == forked.unreadable == spawned[0].unreadable
    assert (one.workers, forked.workers) == (1, 2)


def test_a_stopped_check_says_so(tmp_path):
    fake = write_fake_idc(tmp_path / "idc")
    stop = threading.Event()
    stop.set()
    with pytest.raises(DatasetError, match="stopped before every patch was read"):
        check_dataset(fake.root, stop=stop)


def test_exclude_writes_what_the_report_found(tmp_path):
    fake = write_fake_idc(tmp_path / "idc")
    patch_id = damage_one(fake)
    report = check_dataset(fake.root)
    assert exclude_unreadable(report) == list_path(fake.root)
    listed = json.loads(list_path(fake.root).read_text())
    assert [p["id"] for p in listed["patches"]] == [patch_id]
    assert listed["root"] == str(fake.root.resolve()) and listed["format"] == "idc"


@pytest.mark.parametrize("option", [["--workers", "0"], ["--workers", "-2"]])
def test_bad_options_and_paths_exit_2_with_one_line(option, tmp_path, capsys):
    fake = write_fake_idc(tmp_path / "idc")
    assert main(["data", "check", str(fake.root), *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers" in err[0]
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
