"""Evaluation opens a dataset with the split the checkpoint was trained on (no patient leakage)."""

from __future__ import annotations

import torch
from helpers import write_fake_idc

from core.checkpoints import ModelCard, save_checkpoint
from core.data import open_dataset
from core.evaluate import evaluate_checkpoint, open_dataset_for
from core.models import build_model


def trained_on(path, root, seed, split_seed=None):
    """A checkpoint whose card says it was trained on ``root`` with training seed ``seed`` and
    split seed ``split_seed`` (None: a card from before the two were apart, so ``seed``)."""
    ds = open_dataset(root, seed=seed if split_seed is None else split_seed)
    model, _ = build_model("idc_cnn")
    card = ModelCard.for_model(
        "idc_cnn",
        dataset=str(root),
        dataset_format="idc",
        seed=seed,
        split_seed=split_seed,
        split_manifest_id=ds.manifest_id,
    )
    return save_checkpoint(path, model, card), ds


def test_dataset_is_opened_with_the_checkpoints_split(tmp_path):
    torch.manual_seed(0)
    root = tmp_path / "idc"
    write_fake_idc(root, n_patients=12, grid=2)
    ckpt, trained_ds = trained_on(tmp_path / "s3.pt", root, seed=3)
    assert open_dataset(root, seed=0).manifest_id != trained_ds.manifest_id  # seeds differ here

    ds, warnings = open_dataset_for(root, [ckpt])
    assert warnings == []
    assert ds.manifest_id == trained_ds.manifest_id
    assert ds.meta["split"].tolist() == trained_ds.meta["split"].tolist()


def test_checkpoints_trained_on_another_split_are_named_in_a_warning(tmp_path):
    root = tmp_path / "idc"
    write_fake_idc(root, n_patients=12, grid=2)
    first, _ = trained_on(tmp_path / "seed0.pt", root, seed=0)
    other, _ = trained_on(tmp_path / "seed3.pt", root, seed=3)

    ds, warnings = open_dataset_for(root, [first, other])
    assert ds.manifest_id == open_dataset(root, seed=0).manifest_id
    assert len(warnings) == 1 and "seed3 was trained" in warnings[0] and "seed 3" in warnings[0]


def test_models_of_other_training_seeds_on_one_split_are_opened_on_it_without_a_warning(tmp_path):
    root = tmp_path / "idc"
    write_fake_idc(root, n_patients=12, grid=2)
    seed5, trained_ds = trained_on(tmp_path / "seed5.pt", root, seed=5, split_seed=3)
    seed7, _ = trained_on(tmp_path / "seed7.pt", root, seed=7, split_seed=3)
    legacy3, _ = trained_on(tmp_path / "legacy3.pt", root, seed=3)  # drew split 3 with its seed

    ds, warnings = open_dataset_for(root, [seed5, seed7, legacy3])
    assert warnings == []
    assert ds.manifest_id == trained_ds.manifest_id == open_dataset(root, seed=3).manifest_id

    _, warnings = open_dataset_for(root, [seed5, trained_on(tmp_path / "s0.pt", root, 5, 0)[0]])
    assert len(warnings) == 1 and "s0 was trained" in warnings[0] and "split seed 0" in warnings[0]


def test_a_checkpoint_from_another_format_is_named_in_a_warning(tmp_path):
    root = tmp_path / "idc"
    write_fake_idc(root, n_patients=12, grid=2)
    idc_model, _ = trained_on(tmp_path / "idc_model.pt", root, seed=0)
    model, _ = build_model("hcd_cnn")
    card = ModelCard.for_model("hcd_cnn", dataset="elsewhere/pcam", dataset_format="pcam")
    pcam_model = save_checkpoint(tmp_path / "pcam_model.pt", model, card)

    _, warnings = open_dataset_for(root, [idc_model, pcam_model])
    assert len(warnings) == 1
    assert "pcam_model" in warnings[0] and "PCAM" in warnings[0] and "IDC" in warnings[0]


def test_a_demo_checkpoint_on_real_data_carries_the_synthetic_caveat(tmp_path):
    """Issue 13, item 7: demo models scored real patches 1.000 without a word."""
    root = tmp_path / "real_idc"
    write_fake_idc(root, n_patients=4, grid=2)
    model, _ = build_model("idc_cnn")
    card = ModelCard.for_model(
        "idc_cnn", dataset="demo/idc", dataset_format="idc", synthetic_data=True
    )
    demo_model = save_checkpoint(tmp_path / "demo_idc.pt", model, card)
    _, warnings = open_dataset_for(root, [demo_model])
    assert [w for w in warnings if "synthetic demo data" in w and "demo_idc" in w]


def test_an_evaluation_names_the_split_it_scored(tmp_path):
    root = tmp_path / "idc"
    write_fake_idc(root, n_patients=12, grid=2)
    ckpt, trained_ds = trained_on(tmp_path / "seed5.pt", root, seed=5, split_seed=3)
    ds, _ = open_dataset_for(root, [ckpt])
    result = evaluate_checkpoint(ckpt, ds, split="test", n_boot=0)
    assert result["manifest_id"] == trained_ds.manifest_id
    assert result["manifest_id"].startswith("idc-seed3-")
