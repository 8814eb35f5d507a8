"""core.catalogue: the checkpoint list and each card read once per file version."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import make_checkpoint  # pytest puts tests/ on sys.path

from core import catalogue, checkpoints
from core.checkpoints import CheckpointError


@pytest.fixture
def card_reads(monkeypatch):
    """Every card read from disk, by file name; torch.load must never be one of them."""
    calls = []
    real_read = checkpoints.read_card

    def counting_read(path):
        calls.append(os.path.basename(path))
        return real_read(path)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("a card read loaded the weights with torch")

    monkeypatch.setattr(checkpoints, "read_card", counting_read)
    monkeypatch.setattr(torch, "load", no_torch_load)
    return calls


def test_a_card_is_read_once_per_file_version_without_torch(tmp_path, card_reads):
    path = make_checkpoint(tmp_path / "a.pt", seed=0, dataset="first")
    assert catalogue.read_card(path).dataset == "first"
    assert catalogue.read_card(str(path)).dataset == "first"
    assert card_reads == ["a.pt"]
    make_checkpoint(tmp_path / "a.pt", seed=0, dataset="second-version")  # rewritten file
    assert catalogue.read_card(path).dataset == "second-version"
    assert len(card_reads) == 2


def test_a_bad_or_missing_checkpoint_raises_every_time(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for _ in range(2):
        with pytest.raises(CheckpointError, match="bad.pt"):
            catalogue.read_card(tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="no such checkpoint"):
            catalogue.read_card(tmp_path / "missing.pt")


def test_checkpoint_choices_list_shipped_then_runs_newest_first(tmp_path, monkeypatch):
    shipped, runs = tmp_path / "ckpts", tmp_path / "runs"
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(shipped))
    monkeypatch.setenv("HISTOLENS_RUNS", str(runs))
    b, a = make_checkpoint(shipped / "b.pt"), make_checkpoint(shipped / "a.pt")
    old, new = make_checkpoint(runs / "old" / "best.pt"), make_checkpoint(runs / "new" / "best.pt")
    os.utime(old, (1, 1))
    assert catalogue.checkpoint_choices() == [a, b, new, old]
    assert catalogue.model_names(catalogue.checkpoint_choices()) == [
        "a",
        "b",
        "new",
        "old",
    ]


# What training writes into every best.pt's card (core.calibration.Fitted.card_fields)
CALIBRATED = dict(
    calibration={"method": "platt", "a": 1.3, "b": -0.2},
    threshold=0.42,
    operating_points={"max_balanced_accuracy": 0.42},
)


def test_a_checkpoint_label_names_model_data_date_and_run(tmp_path, monkeypatch):
    """Issue 13, item 4: not `20261123-002020-auto-95f921/best`."""
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HISTOLENS_RUNS", str(tmp_path / "runs"))
    run = tmp_path / "runs" / "20261123-002020-idc_cnn-smoke-95f921"
    path = make_checkpoint(
        run / "best.pt", dataset=str(tmp_path / "data" / "real" / "idc"), dataset_format="idc",
        created="2026-11-23T00:20:31+00:00", **CALIBRATED,
    )  # fmt: skip
    assert catalogue.model_names([path, run / "last.pt"]) == [
        "idc_cnn-smoke-95f921",
        "idc_cnn-smoke-95f921/last",
    ]
    assert catalogue.checkpoint_label(path) == (
        "idc_cnn · real/idc · 2026-11-23 00:20 · idc_cnn-smoke-95f921"
    )
    demo = make_checkpoint(
        tmp_path / "elsewhere" / "demo" / "pcam.pt", dataset="/other/host/demo/pcam",
        dataset_format="pcam", synthetic_data=True, created="2026-11-22T03:06:15+00:00",
    )  # fmt: skip
    assert catalogue.checkpoint_label(demo).startswith(
        "idc_cnn · demo/pcam (synthetic) · 2026-11-22 03:06"
    )
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert catalogue.checkpoint_label(tmp_path / "bad.pt").endswith("/bad (unreadable)")


def test_a_checkpoint_without_calibration_says_so_and_why(tmp_path, monkeypatch):
    """Issue 22, item 3: a card with no calibration learnt on validation (a run's best.pt from
    before every best.pt was calibrated, a shipped or imported model) reads "not calibrated"
    in every chooser, and its one line says why; a calibrated one, or an exported model whose
    map is folded into its weights (operating points kept), does not."""
    monkeypatch.setenv("HISTOLENS_RUNS", str(tmp_path / "runs"))
    plain = make_checkpoint(tmp_path / "plain.pt")
    calibrated = make_checkpoint(tmp_path / "calibrated.pt", **CALIBRATED)
    folded = make_checkpoint(
        tmp_path / "folded.pt", threshold=0.42, operating_points={"max_balanced_accuracy": 0.42}
    )
    assert catalogue.checkpoint_label(plain).endswith("/plain · not calibrated")
    why = catalogue.not_calibrated_why(plain)
    assert "no calibration map" in why and "raw softmax, called at 0.5" in why
    assert "python -m core calibrate" in why  # and how to fix it
    for path in (calibrated, folded):
        assert "not calibrated" not in catalogue.checkpoint_label(path)
        assert catalogue.not_calibrated_why(path) is None
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert catalogue.not_calibrated_why(tmp_path / "bad.pt") is None  # card_problem says why
