"""`python -m core explain`: writes the overlay PNG and prints P(tumour); bad input -> exit 2."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from core.__main__ import main
from core.checkpoints import ModelCard, load_checkpoint, save_checkpoint
from core.models import build_model
from core.preprocess import predict_proba

pytest.importorskip("pytorch_grad_cam", reason="needs grad-cam")


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model("hcd_cnn")
    return save_checkpoint(tmp_path / "m.pt", model, ModelCard.for_model("hcd_cnn", input_size=32))


def test_explain_writes_overlay_and_prints_probability(ckpt, tmp_path, capsys):
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "patch.png")
    out = tmp_path / "out" / "overlay.png"
    rc = main(
        [
            "explain",
            "--checkpoint",
            str(ckpt),
            "--image",
            str(tmp_path / "patch.png"),
            "--method",
            "gradcam++",
            "--target",
            "tumour",
            "--out",
            str(out),
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0
    written = np.asarray(Image.open(out))
    assert written.shape == (32, 32, 3) and not np.array_equal(written, pixels)
    prob = float(re.search(r"P\(tumour\) = ([0-9.]+)", stdout).group(1))
    assert prob == pytest.approx(
        float(predict_proba(load_checkpoint(ckpt), pixels[None])[0]), abs=1e-4
    )
    assert "'tumour'" in stdout


def test_explain_resizes_other_sizes_with_a_note(ckpt, tmp_path, capsys):
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(tmp_path / "big.tif")
    rc = main(
        [
            "explain",
            "--checkpoint",
            str(ckpt),
            "--image",
            str(tmp_path / "big.tif"),
            "--out",
            str(tmp_path / "o.png"),
        ]
    )
    assert rc == 0
    assert "resized to the model's 32×32 input" in capsys.readouterr().err
    assert Image.open(tmp_path / "o.png").size == (32, 32)


def test_explain_bad_inputs_exit_2_with_one_line(ckpt, tmp_path, capsys):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    args = ["explain", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.png")]
    assert main([*args, "--image", str(tmp_path / "corrupt.png")]) == 2
    assert "corrupt.png" in capsys.readouterr().err
    assert main([*args, "--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "ok.png")
    assert main([*args, "--image", str(tmp_path / "ok.png"), "--method", "nope"]) == 2
    assert "unknown CAM method" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
