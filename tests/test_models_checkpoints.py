"""Model registry, checkpoints (card round-trip, atomic writes, refusals) and preprocessing."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoints import CheckpointError, ModelCard, load_checkpoint, read_card, save_checkpoint
from core.models import MODELS, build_model, get_target_layer
from core.preprocess import predict_proba, to_model_input
from core.train_config import recommended_model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_one_step_at_its_input_size(name):
    spec = MODELS[name]
    torch.manual_seed(0)
    model, notice = build_model(name)
    assert notice is None
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    logits = model(x)
    assert logits.shape == (2, 2)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    layer = get_target_layer(model, spec.target_layer)
    assert isinstance(layer, torch.nn.Module)
    assert any(layer is m for m in model.modules())


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_accepts_the_minimum_input_size(name):
    model, _ = build_model(name)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_pretrained_without_local_cache_trains_from_scratch_with_a_notice(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model, notice = build_model("resnet18", pretrained=True)
    assert notice is not None and "from scratch" in notice and str(tmp_path) in notice
    assert model.fc.out_features == 2


def test_pretrained_weights_come_from_the_local_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / Path(url).name)
    model, notice = build_model("resnet18", pretrained=True)
    assert notice is None
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_recommended_model_follows_patch_size():
    assert recommended_model(50) == "bn_cnn"
    assert recommended_model(96) == "hcd_cnn"


def test_unknown_target_layer_is_a_clear_error():
    model, _ = build_model("idc_cnn")
    with pytest.raises(ValueError, match="layer9"):
        get_target_layer(model, "layer9.0")


def _card(**kw):
    kw = {"dataset": "demo/idc", "dataset_format": "idc", "seed": 3} | kw
    return ModelCard.for_model("idc_cnn", **kw)


def test_checkpoint_round_trip_keeps_weights_and_card(tmp_path):
    model, _ = build_model("idc_cnn")
    card = _card(metrics={"val_auc": 0.9}, train_config={"epochs": 2})
    path = save_checkpoint(tmp_path / "best.pt", model, card, epoch=2)
    loaded = load_checkpoint(path)
    assert loaded.card == card
    assert loaded.card.mean == (0.0, 0.0, 0.0) and loaded.card.input_size == 50
    assert not loaded.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert len(loaded.sha256) == 64
    assert read_card(path) == card
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temp file left behind


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    model, _ = build_model("idc_cnn")
    path = save_checkpoint(tmp_path / "last.pt", model, _card(seed=1))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, model, _card(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": "histolens-checkpoint", "card": {}, "state_dict": {}, "x": _Exploit()}, path
    )
    for read in (load_checkpoint, read_card):
        with pytest.raises(CheckpointError, match="refused"):
            read(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)


def test_truncated_checkpoint_is_refused(tmp_path):
    model, _ = build_model("idc_cnn")
    path = save_checkpoint(tmp_path / "best.pt", model, _card())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"weights": torch.zeros(2)}, "not a HistoLens checkpoint"),
        (torch.zeros(3), "not a HistoLens checkpoint"),
    ],
)
def test_foreign_files_are_refused(tmp_path, payload, message):
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, named",
    [
        (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "unrecognised"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
        (b"\x1f\x8b\x08" + bytes(64), "a gzip file"),
        (b"checkpoint = best.pt\n", "text"),
    ],
)
def test_a_file_that_is_no_archive_says_what_it_looks_like(tmp_path, content, named):
    """Random bytes were refused as 'holds Python objects other than tensors (WeightsUnpickler
    error:)' with an empty detail: they are not a checkpoint archive at all."""
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    for read in (load_checkpoint, read_card):
        with pytest.raises(CheckpointError, match="not a checkpoint archive") as err:
            read(path)
        assert named in str(err.value) and "Python objects" not in str(err.value)


def test_empty_missing_and_mismatched_files_are_refused(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    model, _ = build_model("idc_cnn")
    card = ModelCard.for_model("hcd_cnn")  # card says hcd_cnn, weights are idc_cnn
    save_checkpoint(tmp_path / "wrong.pt", model, card)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "wrong.pt")


def test_preprocessing_follows_the_card():
    card = ModelCard.for_model("resnet18", input_size=64)
    images = np.full((2, 50, 50, 3), 255, dtype=np.uint8)
    images[1] = 0
    x = to_model_input(images, card)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    expected_white = (1 - torch.tensor(card.mean)) / torch.tensor(card.std)
    assert torch.allclose(x[0, :, 10, 10], expected_white, atol=1e-5)
    assert torch.allclose(
        x[1, :, 10, 10], -torch.tensor(card.mean) / torch.tensor(card.std), atol=1e-5
    )
    assert to_model_input(images, card, channels_last=True).is_contiguous(
        memory_format=torch.channels_last
    )
    with pytest.raises(TypeError):
        to_model_input(images.astype(np.float32), card)


def test_predict_proba_is_batch_size_independent(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model("idc_cnn")
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, _card()))
    images = np.random.default_rng(0).integers(0, 256, size=(5, 50, 50, 3), dtype=np.uint8)
    p_all = predict_proba(loaded, images, batch_size=5)
    p_small = predict_proba(loaded, images, batch_size=2)
    assert p_all.shape == (5,) and np.all((p_all >= 0) & (p_all <= 1))
    np.testing.assert_allclose(p_all, p_small, atol=1e-5)


def test_a_card_reads_without_torch_and_equals_the_full_loads(tmp_path):
    """read_card parses the archive's pickle itself (tensors left unread): the same card as
    torch.load gives, for a plain checkpoint and a last.pt with optimizer state (bf16 weights
    too), in an interpreter that never imports torch."""
    import subprocess
    import sys

    from core.checkpoints import card_of, load_payload

    model, _ = build_model("idc_cnn")
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 3, 50, 50)).sum().backward()
    optimizer.step()
    card = ModelCard.for_model("idc_cnn", dataset="somewhere")
    files = [
        save_checkpoint(tmp_path / "best.pt", model, card),
        save_checkpoint(tmp_path / "last.pt", model, card, optimizer=optimizer.state_dict()),
        save_checkpoint(tmp_path / "half.pt", model.to(torch.bfloat16), card),
    ]
    for path in files:
        assert read_card(path) == card_of(load_payload(path), path) == card
    script = (
        "import sys; from core.checkpoints import read_card; "
        "cards = [read_card(p).dataset for p in sys.argv[1:]]; "
        "print(cards, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, files)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split("] ")[-1].strip() == "False", result.stderr[-2000:]
    assert result.stdout.count("somewhere") == 3


def test_our_own_models_and_their_cards_never_import_torchvision():
    """``import torchvision`` imports torch._dynamo: 3-4 s of a run's launch and ~150 MB of a
    server's memory that the small CNNs never need. The card still records its version."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from core.checkpoints import ModelCard\n"
        "from core.models import build_model\n"
        "for name in ('hcd_cnn', 'idc_cnn', 'bn_cnn', 'small_resnet'):\n"
        "    build_model(name)\n"
        "card = ModelCard.for_model('hcd_cnn')\n"
        "print('torchvision' in sys.modules, card.versions['torchvision'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, version = out.stdout.split()
    assert imported == "False"
    assert version[0].isdigit()  # e.g. 0.29.1, from the installed package's metadata
