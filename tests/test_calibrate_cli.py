"""`python -m core calibrate`: an old or imported checkpoint gets the calibration map and
operating points training gives every best.pt, fitted on its own validation split, its weights
untouched; bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_checkpoint

from core.__main__ import main
from core.calibration import fit_operating_point
from core.checkpoints import load_checkpoint, load_payload, read_card
from core.data import open_dataset
from core.evaluate import predict_indices


@pytest.fixture
def old(demo_root, tmp_path):
    """An uncalibrated checkpoint of the demo PCam set, float16 weights as --best-fp16 writes."""
    path = make_checkpoint(tmp_path / "old.pt", arch="hcd_cnn", input_size=32)
    payload = load_payload(path)
    payload["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()
    }
    torch.save(payload, path)
    return path


def test_calibrate_writes_the_map_training_would_and_keeps_the_weights(
    old, demo_root, tmp_path, capsys
):
    out = tmp_path / "calibrated.pt"
    assert not read_card(old).is_calibrated
    assert (
        main(
            [
                "calibrate",
                "--checkpoint",
                str(old),
                "--data",
                str(demo_root / "pcam"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "written to" in capsys.readouterr().out
    card = read_card(out)
    assert card.is_calibrated and card.conformal
    ds = open_dataset(demo_root / "pcam")
    valid = np.sort(ds.indices(split="valid"))
    raw = predict_indices(old, ds, valid, calibrated=False, device="cpu", precision="fp32")
    fitted = fit_operating_point(ds.meta["label"].to_numpy()[valid], raw, "platt")
    assert card.threshold == pytest.approx(fitted.threshold, abs=1e-6)
    assert card.calibration["method"] == fitted.calibration.method
    for key in ("a", "b"):
        assert card.calibration[key] == pytest.approx(fitted.calibration.to_dict()[key], rel=1e-4)
    before, after = load_payload(old)["state_dict"], load_payload(out)["state_dict"]
    assert before.keys() == after.keys()
    assert all(
        torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before
    )
    assert load_checkpoint(out).card.arch == "hcd_cnn"


def test_calibrate_refuses_what_it_cannot_do_in_one_line(old, demo_root, tmp_path, capsys):
    args = ["calibrate", "--checkpoint", str(old), "--data", str(demo_root / "pcam")]
    assert main([*args, "--out", str(old)]) == 2  # would replace its own input
    not_data = ["calibrate", "--checkpoint", str(old), "--data", str(tmp_path)]
    assert main([*not_data, "--out", str(tmp_path / "x.pt")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2
    assert not (tmp_path / "x.pt").exists()
