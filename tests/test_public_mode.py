"""Public mode (HISTOLENS_PUBLIC=1) in core: the flag, the harder upload cap, and visitors'
checkpoint uploads validated like load_checkpoint, refused with one line naming the upload."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from core import config
from core.checkpoints import (
    CheckpointError,
    ModelCard,
    load_uploaded_checkpoint,
    save_checkpoint,
)
from core.models import build_model
from core.uploads import UploadError, load_upload


@pytest.mark.parametrize(
    ("value", "public"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("no", False)],
)
def test_public_mode_flag(monkeypatch, value, public):
    monkeypatch.setenv("HISTOLENS_PUBLIC", value)
    assert config.public_mode() is public


def test_public_mode_is_off_by_default(monkeypatch):
    monkeypatch.delenv("HISTOLENS_PUBLIC", raising=False)
    assert not config.public_mode()


def test_public_mode_caps_uploads_at_16_megapixels(monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGB", (5000, 4000), (230, 180, 210)).save(buffer, "PNG")  # 20 MP, a few KB
    monkeypatch.setenv("HISTOLENS_PUBLIC", "1")
    with pytest.raises(UploadError, match="16,000,000 pixel limit"):
        load_upload("tile.png", buffer.getvalue(), size=96)


def checkpoint_bytes(tmp_path, **card_fields) -> bytes:
    model, _ = build_model("hcd_cnn")
    card = ModelCard.for_model("hcd_cnn", **card_fields)
    return save_checkpoint(tmp_path / "made.pt", model, card).read_bytes()


def test_uploaded_checkpoint_loads_like_a_local_one(tmp_path):
    loaded = load_uploaded_checkpoint("mine.pt", checkpoint_bytes(tmp_path), tmp_path / "up")
    assert loaded.card.arch == "hcd_cnn"
    assert loaded.path.parent.parent == tmp_path / "up" and loaded.path.name == "mine.pt"
    assert not loaded.model.training


def refused(tmp_path, data: bytes, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_uploaded_checkpoint("visitor.pt", data, tmp_path / "up", **kwargs)
    message = str(info.value)
    assert message.startswith("visitor.pt: ") and "\n" not in message
    assert str(tmp_path) not in message  # the server's folders stay private
    assert not list((tmp_path / "up").rglob("*.pt"))  # nothing kept from a refused upload
    return message


def test_uploaded_checkpoint_that_is_not_ours_is_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"state_dict": build_model("hcd_cnn")[0].state_dict()}, buffer)
    assert "not a HistoLens checkpoint" in refused(tmp_path, buffer.getvalue())
    refused(tmp_path, b"PK\x03\x04 not a zip at all")


def test_uploaded_checkpoint_too_big_is_refused(tmp_path):
    assert "over the" in refused(tmp_path, checkpoint_bytes(tmp_path), max_bytes=1024)


def test_uploaded_checkpoint_for_another_input_size_is_refused(tmp_path):
    assert "input_size" in refused(tmp_path, checkpoint_bytes(tmp_path, input_size=4096))
