"""core.embed: head-input features, their cache beside the prediction cache, 2-D maps, the CLI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_checkpoint

from core import embed, evaluate
from core.__main__ import main
from core.checkpoints import load_checkpoint
from core.data import open_dataset
from core.preprocess import to_model_input


@pytest.fixture
def pcam(demo_root):
    return open_dataset(demo_root / "pcam")


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "hcd.pt", arch="hcd_cnn")


def _head_input(loaded, images):
    """hcd_cnn's classifier without its last linear layer, run by hand."""
    model = loaded.model
    with torch.no_grad():
        x = to_model_input(images, loaded.card)
        return model.classifier[:4](model.pool(model.features(x))).numpy()


def test_features_are_the_head_input_and_probs_match_predict_split(pcam, ckpt):
    frame, features = embed.split_features(
        ckpt, pcam, "test", batch_size=32, device="cpu", precision="fp32"
    )
    indices = pcam.indices(split="test")
    assert features.shape == (len(indices), 128) and features.dtype == np.float32
    assert frame["index"].tolist() == sorted(indices.tolist())
    first = frame["index"].to_numpy()[:8]
    expected = _head_input(load_checkpoint(ckpt), pcam.read_batch(first))
    np.testing.assert_allclose(features[:8], expected, rtol=1e-4, atol=1e-5)
    direct = evaluate.predict_indices(
        ckpt, pcam, frame["index"].to_numpy(), device="cpu", precision="fp32"
    )
    np.testing.assert_allclose(frame["prob"], direct, atol=1e-6)


def test_features_and_predictions_are_cached_under_the_prediction_key(pcam, ckpt, monkeypatch):
    frame, features = embed.split_features(ckpt, pcam, "test", device="cpu")
    predictions, cache = embed.cache_paths(ckpt, pcam, "test")
    assert cache.exists() and predictions.exists()
    assert cache.stem == predictions.stem  # same key, one folder over
    monkeypatch.setattr(
        "core.checkpoints.load_checkpoint", lambda *a, **k: pytest.fail("model loaded again")
    )
    again, cached = embed.split_features(ckpt, pcam, "test")
    pd.testing.assert_frame_equal(again, frame)
    np.testing.assert_array_equal(cached, features)
    assert evaluate.predict_split(ckpt, pcam, "test")["prob"].equals(frame["prob"])


def test_pca_map_is_seeded_cached_and_capped_with_a_note(pcam, ckpt):
    full = embed.embedding_map(ckpt, pcam, "test", method="pca", device="cpu")
    assert full.note is None and full.n_total == len(full.frame) == 256
    assert {"id", "label", "prob", "x", "y"} <= set(full.frame.columns)
    sample = embed.embedding_map(ckpt, pcam, "test", method="pca", cap=100)
    assert len(sample.frame) == 100 and sample.n_total == 256
    assert "100 of 256" in sample.note
    again = embed.embedding_map(ckpt, pcam, "test", method="pca", cap=100)
    pd.testing.assert_frame_equal(again.frame, sample.frame)
    assert set(sample.frame["id"]) <= set(full.frame["id"])


def test_umap_is_reproducible_with_its_seed(pcam, ckpt):
    _, features = embed.split_features(ckpt, pcam, "test", device="cpu")
    first = embed.reduce_2d(features[:120], "umap", seed=3)
    assert first.shape == (120, 2) and np.isfinite(first).all()
    np.testing.assert_allclose(embed.reduce_2d(features[:120], "umap", seed=3), first)


def test_reduce_refuses_unknown_methods_and_tiny_sets():
    with pytest.raises(ValueError, match="tsne"):
        embed.reduce_2d(np.zeros((10, 4)), "tsne")
    with pytest.raises(ValueError, match="at least 3"):
        embed.reduce_2d(np.zeros((2, 4)), "pca")


def test_trained_demo_model_separates_the_classes_on_its_map(pcam):
    """The shipped demo checkpoint's map puts tumour and normal patches in different places:
    most patches' nearest neighbour on the map has their label."""
    from core.config import REPO_ROOT

    ckpt = REPO_ROOT / "checkpoints" / "demo_pcam_hcd_cnn.pt"
    if not ckpt.exists():
        pytest.skip("demo checkpoint not shipped in this checkout")
    frame = embed.embedding_map(ckpt, pcam, "test", method="pca").frame
    xy, labels = frame[["x", "y"]].to_numpy(), frame["label"].to_numpy()
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(1)] == labels).mean() >= 0.9


def test_cli_writes_one_row_per_patch(pcam, ckpt, tmp_path, capsys):
    out = tmp_path / "map.parquet"
    code = main(
        ["embed", "--checkpoint", str(ckpt), "--data", str(pcam.root), "--method", "pca",
         "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    table = pd.read_parquet(out)
    # the demo PCam has a meta csv, so each patch's slide is known
    assert list(table.columns) == ["id", "label", "prob", "x", "y", "patient"]
    assert len(table) == 256 and table["id"].is_unique and table["patient"].notna().all()
    # 'auto' precision: fp32 on the CPU, bf16 under --like-cuda (as a CUDA machine computes)
    import torch

    from core import device

    precision = device.resolve_precision("auto", torch.device("cpu"))
    assert table.attrs["computed_with"] == {"device": "cpu", "precision": precision}


def test_cli_bad_checkpoint_is_one_line_and_writes_nothing(pcam, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "map.parquet"
    code = main(["embed", "--checkpoint", str(bad), "--data", str(pcam.root), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert not out.exists()


def _map(ids, labels, probs, patients=None) -> embed.EmbeddingMap:
    frame = pd.DataFrame(
        {"index": range(len(ids)), "id": ids, "label": labels, "prob": probs,
         "x": np.arange(len(ids), dtype=float), "y": 0.0}
    )  # fmt: skip
    if patients is not None:
        frame["patient"] = patients
    return embed.EmbeddingMap(frame, len(ids), "pca", None)


def test_colourings_follow_each_models_threshold():
    ids, labels = ["a", "b", "c", "d", "e"], [1, 1, 0, 0, -1]
    maps = {
        "A": _map(ids, labels, [0.9, 0.4, 0.6, 0.1, 0.7], ["p1", "p1", "p2", "p2", None]),
        "B": _map(ids, labels, [0.9, 0.9, 0.2, 0.1, 0.2], ["p1", "p1", "p2", "p2", None]),
    }
    at = {"A": 0.5, "B": 0.5}
    outcome = embed.colourings(maps, "outcome", at)
    assert outcome["A"].values.tolist() == ["TP", "FN", "FP", "TN", "unlabelled"]
    assert outcome["B"].values.tolist() == ["TP", "TP", "TN", "TN", "unlabelled"]
    # the card's threshold moves the calls: A at 0.35 calls b tumour
    assert embed.colourings(maps, "outcome", {"A": 0.35, "B": 0.5})["A"].values[1] == "TP"
    assert embed.colourings(maps, "label", at)["A"].values.tolist()[-1] == "unlabelled"
    assert embed.colourings(maps, "patient", at)["B"].values.tolist()[-1] == "unknown"
    prob = embed.colourings(maps, "P(tumour)", at)["A"]
    assert prob.continuous and prob.values.tolist() == [0.9, 0.4, 0.6, 0.1, 0.7]
    disagreement = embed.colourings(maps, "disagreement", at)
    assert disagreement["A"].values.tolist() == [
        "both: tumour", "only B: tumour", "only A: tumour", "both: normal", "only A: tumour"
    ]  # fmt: skip
    assert embed.colour_options(1, has_patients=False) == (
        "label",
        "prediction",
        "outcome",
        "P(tumour)",
    )


def test_maps_of_different_patches_are_refused():
    with pytest.raises(ValueError, match="same patches"):
        embed.colourings(
            {"A": _map(["a"], [1], [0.5]), "B": _map(["z"], [1], [0.5])},
            "label",
            {"A": 0.5, "B": 0.5},
        )


def test_selection_rows_and_csv_table():
    points = [{"customdata": 3}, {"customdata": [1]}, {"customdata": 3}, {"x": 0}]
    assert embed.rows_from_selection(points) == [1, 3]
    maps = {"A": _map(["a", "b", "c", "d"], [1, 0, 1, 0], [0.9, 0.2, 0.3, 0.8])}
    table = embed.selection_table(maps, [1, 3], {"A": 0.5})
    assert table["id"].tolist() == ["b", "d"]
    assert table["call A"].tolist() == ["normal", "tumour"]
    assert table["prob A"].tolist() == [0.2, 0.8]
    assert table["threshold A"].tolist() == [0.5, 0.5]
    assert set(table["device A"]) == {"unknown"}  # a map that does not say is not guessed
    maps["A"] = replace(maps["A"], computed_with={"device": "cuda", "precision": "bf16"})
    table = embed.selection_table(maps, [1], {"A": 0.3})
    assert table[["device A", "precision A"]].values.tolist() == [["cuda", "bf16"]]
