"""core.interop and `python -m core import|export`: a notebook's resnet18 in and out."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from core.__main__ import main
from core.checkpoints import load_checkpoint, save_checkpoint
from core.interop import CARD_FILE, EXPORT_FILE, PARITY_TOLERANCE
from core.preprocess import predict_proba, to_model_input

RNG = np.random.default_rng(0)
PATCHES = RNG.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)


def notebook_resnet18(outputs: int = 2, seed: int = 0) -> nn.Module:
    """What a notebook fine-tunes: torchvision's resnet18 with its head replaced."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, outputs)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def notebook_probs(model: nn.Module, card, tumour_index: int = 1) -> np.ndarray:
    """P(tumour) as the notebook computes it, on the same normalised input HistoLens uses."""
    with torch.no_grad():
        out = model(to_model_input(PATCHES, card))
    if out.shape[1] == 1:
        return torch.sigmoid(out[:, 0]).numpy()
    return torch.softmax(out, 1)[:, tumour_index].numpy()


def run_cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def import_cli(weights, out, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        "import", "--weights", str(weights), "--arch", "resnet18", "--out", str(out), *extra
    )


@pytest.mark.parametrize(
    "outputs, classes, wrap",
    [
        (2, "normal,tumour", lambda sd: sd),
        (1, "normal,tumour", lambda sd: sd),
        (2, "tumour,normal", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}),
        (1, "tumour,normal", lambda sd: {"model_state_dict": sd, "epoch": 3}),
    ],
    ids=["softmax", "sigmoid", "swapped+wrapped", "sigmoid-of-normal+epoch"],
)
def test_notebook_state_dict_imports_with_exact_probabilities(tmp_path, outputs, classes, wrap):
    model = notebook_resnet18(outputs)
    weights = tmp_path / "notebook.pth"
    torch.save(wrap(model.state_dict()), weights)
    out = tmp_path / "imported.pt"
    code, stdout, stderr = import_cli(weights, out, "--classes", classes)
    assert code == 0, stderr
    loaded = load_checkpoint(out)
    assert loaded.card.arch == "resnet18" and loaded.card.input_size == 96
    assert loaded.card.train_config["head"] == ("sigmoid-1" if outputs == 1 else "softmax-2")
    expected = notebook_probs(model, loaded.card, tumour_index=classes.split(",").index("tumour"))
    if outputs == 1 and classes.startswith("tumour"):
        expected = 1 - expected  # the sigmoid gave P(normal)
    assert (
        np.abs(predict_proba(loaded, PATCHES, precision="fp32") - expected).max()
        <= PARITY_TOLERANCE
    )


def test_card_takes_preprocessing_and_dataset_from_the_command_line(tmp_path, demo_root):
    weights = tmp_path / "w.pth"
    torch.save(notebook_resnet18().state_dict(), weights)
    out = tmp_path / "c.pt"
    code, _, stderr = import_cli(
        weights, out, "--input-size", "64", "--mean", "0.5", "0.5", "0.5",
        "--std", "0.25", "0.25", "0.25", "--dataset", str(demo_root / "pcam"),
    )  # fmt: skip
    assert code == 0, stderr
    card = load_checkpoint(out).card
    assert (card.input_size, card.mean, card.std) == (64, (0.5,) * 3, (0.25,) * 3)
    assert card.dataset_format == "pcam" and card.synthetic_data
    assert card.split_manifest_id == "unknown (imported)"


def test_torchscript_input_imports_and_matches_its_own_outputs(tmp_path):
    model = notebook_resnet18(outputs=1)
    scripted = tmp_path / "model.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(scripted))
    out = tmp_path / "from_ts.pt"
    code, _, stderr = import_cli(scripted, out)
    assert code == 0, stderr
    loaded = load_checkpoint(out)
    assert loaded.card.train_config["source"] == "torchscript"
    expected = notebook_probs(model, loaded.card)
    assert (
        np.abs(predict_proba(loaded, PATCHES, precision="fp32") - expected).max()
        <= PARITY_TOLERANCE
    )


@pytest.mark.parametrize(
    "calibration", [{}, {"method": "platt", "a": 0.7, "b": -1.3}], ids=["identity", "platt"]
)
def test_export_round_trip_keeps_calibrated_probabilities_and_card(tmp_path, calibration):
    weights, ckpt, exported = tmp_path / "w.pth", tmp_path / "c.pt", tmp_path / "model.ts"
    torch.save(notebook_resnet18().state_dict(), weights)
    assert import_cli(weights, ckpt)[0] == 0
    imported = load_checkpoint(ckpt)
    card = replace(imported.card, calibration=calibration, threshold=0.31)
    save_checkpoint(ckpt, imported.model, card)
    code, stdout, stderr = run_cli(
        "export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(exported)
    )
    assert code == 0, stderr
    assert "calibrated P(tumour)" in stdout and "(cpu, fp32)" in stdout
    loaded = load_checkpoint(ckpt)
    extra = {CARD_FILE: "", EXPORT_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(exported), _extra_files=extra)
    with torch.no_grad():
        probs = torch.softmax(module(to_model_input(PATCHES, loaded.card)), 1)[:, 1].numpy()
    assert (
        np.abs(probs - predict_proba(loaded, PATCHES, precision="fp32")).max() <= PARITY_TOLERANCE
    )
    raw = notebook_probs(imported.model, loaded.card)
    assert (np.abs(probs - raw).max() > 0.01) == bool(calibration)  # the map is in the outputs
    inside = json.loads(extra[CARD_FILE])
    assert inside["arch"] == "resnet18" and inside["threshold"] == 0.31
    assert inside["calibration"] == {}  # already applied: a reader must not apply it twice
    about = json.loads(extra[EXPORT_FILE])
    assert about["folded_calibration"] == (calibration or {"method": "identity"})
    assert about["parity"]["device"] == "cpu" and about["parity"]["precision"] == "fp32"
    # and back in: the exported file imports to a model with the same (calibrated) outputs
    again = tmp_path / "again.pt"
    assert import_cli(exported, again)[0] == 0
    back = load_checkpoint(again)
    assert np.abs(predict_proba(back, PATCHES, precision="fp32") - probs).max() <= PARITY_TOLERANCE
    # with its operating point and preprocessing: the exported card's, not the registry's
    assert back.card.threshold == 0.31 and back.card.calibration == {}
    assert (back.card.input_size, back.card.mean) == (loaded.card.input_size, loaded.card.mean)
    assert back.card.train_config["imported_from"] == "model.ts"


def test_import_of_an_export_carries_its_card_and_refuses_another_arch(tmp_path, monkeypatch):
    """An exported file keeps its threshold, operating points, input size, normalisation and
    training data on the way back in (the command's own flags still win); imported as another
    architecture it is refused with one line naming the right one."""
    weights, ckpt, exported = tmp_path / "w.pth", tmp_path / "c.pt", tmp_path / "model.ts"
    torch.save(notebook_resnet18().state_dict(), weights)
    assert import_cli(weights, ckpt, "--input-size", "64")[0] == 0
    imported = load_checkpoint(ckpt)
    card = replace(
        imported.card,
        threshold=0.27,
        operating_points={"max_balanced_accuracy": 0.27, "sensitivity>=0.90": 0.12},
        mean=(0.7, 0.55, 0.7),
        dataset="/data/real/idc",
        dataset_format="idc",
        split_manifest_id="idc-seed1-abc",
        seed=3,
        split_seed=1,
    )
    save_checkpoint(ckpt, imported.model, card)
    assert run_cli("export", "--checkpoint", str(ckpt), "--out", str(exported))[0] == 0

    assert import_cli(exported, tmp_path / "back.pt")[0] == 0
    back = load_checkpoint(tmp_path / "back.pt").card
    assert (back.threshold, back.operating_points) == (card.threshold, card.operating_points)
    assert (back.input_size, back.mean, back.std) == (64, card.mean, card.std)
    assert (back.dataset, back.dataset_format, back.split_manifest_id) == (
        "/data/real/idc",
        "idc",
        "idc-seed1-abc",
    )
    assert (back.seed, back.split_seed) == (3, 1)
    assert import_cli(exported, tmp_path / "flags.pt", "--mean", "0.5", "0.5", "0.5")[0] == 0
    assert load_checkpoint(tmp_path / "flags.pt").card.mean == (0.5, 0.5, 0.5)

    code, _, stderr = run_cli(
        "import",
        "--weights",
        str(exported),
        "--arch",
        "small_resnet",
        "--out",
        str(tmp_path / "x.pt"),
    )
    assert code == 2 and not (tmp_path / "x.pt").exists()
    assert stderr.strip().splitlines() == [
        f"error: {exported}: exported as 'resnet18', imported as 'small_resnet'; use --arch resnet18"
    ]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _other_architecture(path):
    model = torchvision.models.resnet34(weights=None)
    model.fc = nn.Linear(512, 2)
    torch.save(model.state_dict(), path)


def _three_classes(path):
    torch.save(notebook_resnet18(outputs=3).state_dict(), path)


def _pickle_with_code(path):
    with open(path, "wb") as fh:
        pickle.dump({"fc.weight": RunsCode()}, fh)


def _whole_module(path):
    torch.save(notebook_resnet18(), path)  # pickles the class: code, not weights


def _not_torchscript(path):
    path.write_bytes(b"PK\x03\x04 this is not an archive")


def _state_dict_named_ts(path):
    torch.save(notebook_resnet18().state_dict(), path)


@pytest.mark.parametrize(
    "write, name, message",
    [
        (_other_architecture, "w.pth", "unexpected key 'layer1.2.conv1.weight'.*fit resnet34"),
        (_three_classes, "w.pth", "fc.weight has 3 outputs"),
        (_pickle_with_code, "w.pth", "refused — it holds Python objects"),
        (_whole_module, "w.pth", "refused — it holds Python objects"),
        (_not_torchscript, "w.ts", "not a"),
        (_state_dict_named_ts, "w.ts", "not a TorchScript archive"),
    ],
    ids=[
        "other-arch",
        "three-classes",
        "pickle-with-code",
        "whole-module",
        "garbage-ts",
        "sd-as-ts",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, write, name, message):
    import re

    weights, out = tmp_path / name, tmp_path / "out.pt"
    write(weights)
    code, stdout, stderr = import_cli(weights, out)
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert re.search(message, stderr), stderr
    assert "pwned" not in stdout and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize(
    "flags, field",
    [(("--std", "0", "1", "1"), "'std'"), (("--input-size", "5000"), "'input_size'")],
)
def test_a_card_the_loaders_would_refuse_is_never_written(tmp_path, flags, field):
    """`--std 0 1 1` and `--input-size 5000` were written, then every command refused the
    checkpoint and advised re-saving it with `python -m core train`."""
    weights, out = tmp_path / "w.pth", tmp_path / "out.pt"
    torch.save(notebook_resnet18().state_dict(), weights)
    code, _, stderr = import_cli(weights, out, *flags)
    assert code == 2 and not out.exists(), stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "not written" in lines[0] and field in lines[0], stderr


def test_wrong_classes_and_existing_output_are_refused(tmp_path):
    weights, out = tmp_path / "w.pth", tmp_path / "out.pt"
    torch.save(notebook_resnet18().state_dict(), weights)
    code, _, stderr = import_cli(weights, out, "--classes", "benign,malignant")
    assert code == 2 and "--classes" in stderr and not out.exists()
    out.write_bytes(b"keep me")
    code, _, stderr = import_cli(weights, out)
    assert code == 2 and "already exists" in stderr and out.read_bytes() == b"keep me"
