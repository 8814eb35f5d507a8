"""Malformed checkpoints, by class: every card field out of type or range, non-finite weights,
a zip record that inflates to GiBs. Each is a CheckpointError of one line naming the file, and
the CLI (evaluate, compare, explain) prints that line and exits 2, never `P(tumour) = nan`."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch
from helpers import make_checkpoint, write_fake_pcam
from PIL import Image

from core.__main__ import main
from core.checkpoints import CheckpointError, load_checkpoint, read_card

# field -> values a hostile or damaged card might hold
BAD_FIELDS = {
    "arch": ["nope", 5, None],
    "input_size": [0, -1, "96", 20000, 96.5, True, None],
    "mean": [[0.5, 0.5], 0.5, ["a", "b", "c"], [math.nan, 0.5, 0.5], [2, 0, 0], None],
    "std": [[0, 0, 0], [0.5, 0.5], -1, [math.inf, 1, 1], None],
    "target_layer": ["", "no.such.layer", 3],
    "class_names": [["normal"], "ab", [0, 1], ["tumour", "normal"]],
    "dataset": [5, None, ["a"]],
    "dataset_format": ["jpeg", 3],
    "split_manifest_id": [7],
    "seed": [1.5, "0", -1, 2**40, True],
    "synthetic_data": ["yes", 1],
    "train_config": ["lr=1"],
    "metrics": [[0.9]],
    "calibration": [
        {"method": "isotonic", "a": 1, "b": 0},
        {"method": "platt", "a": -1.0, "b": 0.0},  # a <= 0 would reverse the ranking
        {"method": "platt", "a": math.nan, "b": 0.0},
        {"method": "platt"},
        "platt",
    ],
    "calibration_note": [5, None, "x" * 301],
    "threshold": [1.5, -0.1, math.nan, "0.5", None],
    "operating_points": [{"rule": 2.0}, [0.5]],
    "conformal": [
        {"score": "aps", "n_valid": 10, "quantiles": {"0.1": 0.4}},
        {"score": "lac", "n_valid": -1, "quantiles": {"0.1": 0.4}},
        {"score": "lac", "n_valid": 10, "quantiles": {"0.1": 1.5}},
        {"score": "lac", "n_valid": 10, "quantiles": {"ten": 0.4}},
        {"score": "lac", "n_valid": 10, "quantiles": {"0.1": math.nan}},
        {"score": "lac", "quantiles": {"0.1": 0.4}},
        [0.4],
    ],
    "stain_norm": [
        "macenko",
        {"method": "vahadane"},
        {"method": "macenko", "stain_matrix": [[0.6, 0.7, 0.4]], "max_concentrations": [1, 1]},
        {"method": "reinhard", "means": [70, 10, -5], "stds": [10, 0, 5]},
        {"method": "reinhard", "means": [70, math.nan, -5], "stds": [10, 5, 5]},
    ],
    "versions": [3],
    "created": [20260101],
}
CARD_CASES = [(k, v) for k, values in BAD_FIELDS.items() for v in values]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("good") / "good.pt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fake_pcam(tmp_path_factory.mktemp("data") / "pcam").root


def _resave(good, path, card=None, scale=None, fill=None):
    payload = torch.load(good, weights_only=True)
    if card is not None:
        payload["card"] = card(payload["card"])
    for tensor in payload["state_dict"].values():
        if tensor.is_floating_point() and scale is not None:
            tensor.mul_(scale)
        if tensor.is_floating_point() and fill is not None:
            tensor.fill_(fill)
    torch.save(payload, path)
    return path


def _assert_cli_one_line(argv, named: str, capsys) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "P(tumour)" not in captured.out and named in lines[-1], captured.err
    assert len([line for line in lines if line.startswith("error:")]) == 1


@pytest.mark.parametrize("field,value", CARD_CASES, ids=[f"{k}={v!r}" for k, v in CARD_CASES])
def test_every_card_field_is_type_and_range_checked(field, value, good, data, tmp_path, capsys):
    bad = _resave(good, tmp_path / "bad.pt", card=lambda c: {**c, field: value})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and field in message
    if value != "no.such.layer":  # only a built model knows its layers: load_checkpoint checks
        with pytest.raises(CheckpointError):
            read_card(bad)
    _assert_cli_one_line(
        ["evaluate", "--checkpoint", str(bad), "--data", str(data)], "bad.pt", capsys
    )


@pytest.mark.parametrize("card", [lambda c: "a card", lambda c: {"arch": "idc_cnn"}])
def test_card_that_is_not_a_card_is_refused(card, good, tmp_path):
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(_resave(good, tmp_path / "bad.pt", card=card))


@pytest.mark.parametrize(
    "damage", [{"fill": math.nan}, {"fill": math.inf}, {"scale": 1e30}], ids=["nan", "inf", "1e30"]
)
def test_non_finite_weights_or_outputs_never_print_nan(damage, good, data, tmp_path, capsys):
    """All-NaN / inf weights are refused at load; finite weights whose outputs overflow are
    refused when they predict. Either way one line and exit 2 from evaluate and explain."""
    bad = _resave(good, tmp_path / "bad.pt", **damage)
    patch = tmp_path / "patch.png"
    Image.fromarray(np.full((50, 50, 3), 200, np.uint8)).save(patch)
    _assert_cli_one_line(
        ["evaluate", "--checkpoint", str(bad), "--data", str(data)], "bad.pt", capsys
    )
    explain = [
        "explain",
        "--checkpoint",
        str(bad),
        "--image",
        str(patch),
        "--out",
        str(tmp_path / "o.png"),
    ]
    _assert_cli_one_line(explain, "bad.pt", capsys)


@pytest.mark.parametrize("inflated_mib", [64, 256])
def test_zip_record_that_inflates_far_beyond_the_file_is_refused_before_loading(
    inflated_mib, good, tmp_path, monkeypatch
):
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(good.read_bytes())
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("good/data/999", "w", force_zip64=True) as record:
            block = bytes(2**20)
            for _ in range(inflated_mib):
                record.write(block)
    assert bomb.stat().st_size < good.stat().st_size + inflated_mib * 2**20 // 100

    def never(*args, **kwargs):
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CheckpointError, match="bomb") as err:
        load_checkpoint(bomb)
    assert str(bomb) in str(err.value)
    with pytest.raises(CheckpointError, match="bomb"):  # the card alone: refused the same way
        read_card(bomb)


def test_compare_bootstrap_zero_is_handled_like_evaluate(good, data, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "b.pt", seed=1)
    args = ["--data", str(data), "--bootstrap", "0", "--json"]
    assert main(["evaluate", "--checkpoint", str(good), *args]) == 0
    assert json.loads(capsys.readouterr().out)["auc_ci95"] is None
    assert main(["compare", "--checkpoints", str(good), str(other), *args]) == 0
    table = json.loads(capsys.readouterr().out)
    assert all(row["auc_ci95"] is None for row in table.values())
    assert (
        main(
            [
                "compare",
                "--checkpoints",
                str(good),
                str(other),
                "--data",
                str(data),
                "--bootstrap",
                "0",
            ]
        )
        == 0
    )
    assert "n/a" in capsys.readouterr().out


@pytest.mark.parametrize(
    "option,value",
    [
        ("--batch-size", "0"),
        ("--bootstrap", "-5"),
        ("--bootstrap", "100000000"),
        ("--seed", "-1"),
        ("--threshold", "1.5"),
    ],
)
def test_out_of_range_evaluation_options_are_one_line(option, value, good, data, capsys):
    _assert_cli_one_line(
        ["evaluate", "--checkpoint", str(good), "--data", str(data), option, value], option, capsys
    )
