"""What the pages ask of core: typed folders kept inside the data root, gallery paging, the
faithfulness sample, the called class, patient groups, the training config from widgets and the
dataset opener the pages share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import config
from core.calls import DECISION_THRESHOLD, called_class
from core.data import open_dataset
from core.data.visual import page_count, page_of
from core.train_config import TrainConfig


def test_typed_folders_stay_inside_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    assert config.folder_in_data_root(" demo/idc ") == tmp_path / "data" / "demo" / "idc"
    assert config.folder_in_data_root(str(tmp_path / "data" / "x")) == tmp_path / "data" / "x"
    for outside in ("../elsewhere", str(tmp_path), "demo/../../etc"):
        with pytest.raises(ValueError, match="outside the data root"):
            config.folder_in_data_root(outside)


def test_paging_counts_at_least_one_page_and_clamps():
    indices = np.arange(10)
    assert page_count(0, 4) == 1 and page_count(8, 4) == 2 and page_count(9, 4) == 3
    assert page_of(indices, 0, 4).tolist() == [0, 1, 2, 3]
    assert page_of(indices, 2, 4).tolist() == [8, 9]
    assert page_of(indices, 99, 4).tolist() == [8, 9]
    assert page_of(indices[:0], 0, 4).tolist() == []


def test_the_called_class_follows_the_one_threshold():
    assert called_class(DECISION_THRESHOLD) == "tumour"
    assert called_class(DECISION_THRESHOLD - 1e-6) == "normal"
    assert called_class(0.3, threshold=0.2) == "tumour"


def test_the_training_config_comes_from_widget_values():
    values = dict(epochs=2.0, batch_size=16, lr=0.01, augment=1, limit_batches=0, device="cpu")
    cfg = TrainConfig.from_form("/data/x", None, values)
    assert cfg == TrainConfig(
        data="/data/x", epochs=2, batch_size=16, lr=0.01, augment=True, device="cpu"
    )
    assert isinstance(cfg.epochs, int) and cfg.limit_batches is None
    assert TrainConfig.from_form("/d", "resnet18", {"limit_batches": 3}).limit_batches == 3
    with pytest.raises(ValueError, match="Invalid training config"):
        TrainConfig.from_form("/d", None, {"epochs": 0})


def test_faithfulness_uses_masked_tumour_patches_on_the_demo(demo_root):
    pytest.importorskip("pytorch_grad_cam")
    from core.explain import faithfulness_sample

    shown = np.zeros((5, 96, 96, 3), np.uint8)
    demo = open_dataset(demo_root / "pcam")
    sample = faithfulness_sample(demo, "test", 3, shown, "shown-key")
    assert len(sample.images) == len(sample.masks) <= 3 and sample.masks.any()
    assert "ground-truth masks" in sample.description
    plain = faithfulness_sample(None, None, 3, shown, "shown-key")
    assert plain.masks is None and len(plain.images) == 3 and plain.key == "shown-key|3"


def test_patient_groups_are_the_predicted_patients_with_coordinates(demo_root):
    pytest.importorskip("sklearn")
    from core.compare import patient_groups

    ds = open_dataset(demo_root / "idc")
    test = ds.meta[ds.meta["split"] == "test"]
    preds = {"a": pd.DataFrame({"patient": test["patient"].to_numpy()})}
    assert patient_groups(ds, preds) == sorted(test["patient"].astype(str).unique())
    assert patient_groups(ds, {"a": pd.DataFrame({"id": []})}) == []


def test_pages_can_share_one_dataset_cache_through_the_opener(demo_root, tmp_path):
    from helpers import make_checkpoint

    from core.evaluate import open_dataset_for

    ckpt = make_checkpoint(tmp_path / "a.pt", dataset=str(demo_root / "idc"), dataset_format="idc")
    opened = []

    def opener(path: str, seed: int):
        opened.append((path, seed))
        return open_dataset(path, seed=seed)

    ds, _ = open_dataset_for(demo_root / "idc", [ckpt], opener=opener)
    assert opened == [(str((demo_root / "idc").resolve()), 0)] and ds.format == "idc"
