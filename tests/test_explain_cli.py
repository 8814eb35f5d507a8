"""`python -m core explain`: writes the overlay PNG and prints P(tumour); bad input -> exit 2."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

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
    prob = float(
        re.search(r"P\(tumour\) ([0-9.]+) → (tumour|normal) at the card's threshold", stdout).group(
            1
        )
    )
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


def test_explain_never_reads_a_fifo_or_a_file_over_the_upload_cap(ckpt, tmp_path, capsys):
    """The image used to be read whole before any check: a FIFO hung, 3 GB went to memory."""
    import os

    args = ["explain", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.png")]
    os.mkfifo(tmp_path / "pipe.png")
    assert main([*args, "--image", str(tmp_path / "pipe.png")]) == 2  # returns: no writer
    assert "pipe.png" in capsys.readouterr().err
    with open(tmp_path / "big.png", "wb") as f:
        f.truncate(64 * 2**20)  # sparse: 64 MiB on paper, nothing on disk
    assert main([*args, "--image", str(tmp_path / "big.png")]) == 2
    err = capsys.readouterr().err
    assert "big.png" in err and "64 MiB" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("command", ["explain", "export", "embed"])
def test_an_out_that_is_the_input_or_a_folder_is_refused(command, ckpt, tmp_path, capsys):
    """`--out` equal to `--checkpoint` replaced the model with a PNG / TorchScript / parquet;
    a folder gave IsADirectoryError's traceback."""
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "ok.png")
    extra = {
        "explain": ["--image", str(tmp_path / "ok.png")],
        "export": [],
        "embed": ["--data", str(tmp_path)],
    }[command]
    before = ckpt.read_bytes()
    for out, says in ((ckpt, "is the input"), (tmp_path, "is a folder")):
        assert main([command, "--checkpoint", str(ckpt), *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_a_target_layer_without_a_feature_map_names_the_layer(ckpt, tmp_path, capsys, method):
    """The Linear head as target layer failed with pytorch-grad-cam's 'Invalid grads shape'."""
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "ok.png")
    head = [n for n, m in build_model("hcd_cnn")[0].named_modules() if isinstance(m, nn.Linear)]
    args = ["explain", "--checkpoint", str(ckpt), "--image", str(tmp_path / "ok.png")]
    args += ["--out", str(tmp_path / "o.png"), "--method", method, "--target-layer", head[-1]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target layer Linear gives 1×2, not a feature map" in err[0], err
