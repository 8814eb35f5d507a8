"""`python -m core data summary` and `python -m core demo`."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import write_fake_idc

from core.__main__ import main
from core.data import open_dataset, summarize

KEYS = {"format", "n", "labels", "splits", "patients", "image_size", "excluded"}


def test_summary_json_is_exactly_the_documented_object(demo_root, capsys):
    assert main(["data", "summary", str(demo_root / "pcam"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == KEYS
    assert printed["format"] == "pcam" and printed["image_size"] == [96, 96]
    assert set(printed["splits"]) == {"train", "valid", "test"}
    assert printed == summarize(open_dataset(demo_root / "pcam"))
    for split in printed["splits"].values():
        assert set(split) == {"n", "labels"} and set(split["labels"]) == {"0", "1"}


def test_summary_split_seed_is_the_trainers_split_seed(demo_root, capsys):
    root = demo_root / "idc"  # patients of unequal sizes: splits 0 and 3 count differently
    counts = {}
    for flag in ("--split-seed", "--seed"):
        assert main(["data", "summary", str(root), "--json", flag, "3"]) == 0
        counts[flag] = json.loads(capsys.readouterr().out)["splits"]
    assert (
        counts["--split-seed"]
        == counts["--seed"]
        == summarize(open_dataset(root, seed=3))["splits"]
    )
    assert counts["--seed"] != summarize(open_dataset(root, seed=0))["splits"]  # 3 is not 0 here


def test_summary_text_shows_problems_and_edge_patches(tmp_path, capsys):
    fake = write_fake_idc(tmp_path / "idc")
    src = next(iter(fake.files.values()))
    src.rename(src.with_name(src.name.replace("class", "klass")))  # odd name: reported
    assert main(["data", "summary", str(fake.root)]) == 0
    out = capsys.readouterr().out
    assert "format: idc" in out and "edge patches smaller than 50×50: 12" in out
    assert "problem: 1 file names not" in out


def test_not_a_dataset_exits_non_zero_with_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = subprocess.run(
        [sys.executable, "-m", "core", "data", "summary", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "not a dataset" in result.stderr


def test_demo_command_writes_the_three_sets(tmp_path, monkeypatch, capsys):
    from core.data import demo

    small = demo.DemoSizes(
        pcam=(("train", 8, 1),), hcd_labelled=4, hcd_test=1, hcd_slides=1, idc_patients=1
    )
    full_size = demo.write_demo
    monkeypatch.setattr(demo, "write_demo", lambda out: full_size(out, small))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert {p.name for p in (tmp_path / "d").iterdir()} >= {"pcam", "hcd", "idc"}
    assert open_dataset(tmp_path / "d" / "hcd").synthetic
