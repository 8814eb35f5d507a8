"""CAMs of a model trained on the demo PCam set point at the demo's ground-truth tumour."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import train_demo_checkpoint

from core.checkpoints import load_checkpoint
from core.data import open_dataset

pytest.importorskip("pytorch_grad_cam", reason="needs grad-cam")

from core.explain import (
    compute_cams,
    faithfulness_table,
    localisation_scores,
    select_patches,
    tumour_sample,
)


@pytest.fixture(scope="session")
def demo_checkpoint(demo_root, tmp_path_factory):
    return train_demo_checkpoint(demo_root, tmp_path_factory.getbasetemp() / "explain_demo_run")


@pytest.fixture(scope="session")
def partial_tumours(demo_root):
    """Test-split tumour patches whose mask covers at most half the patch."""
    return tumour_sample(
        open_dataset(demo_root / "pcam"), n=32, split="test", max_mask_fraction=0.5
    )


def test_gradcam_points_at_the_tumour_far_more_often_than_a_random_point(
    demo_checkpoint, partial_tumours
):
    _, images, masks = partial_tumours
    assert len(images) >= 20
    loaded = load_checkpoint(demo_checkpoint)
    result = compute_cams(loaded, images, "gradcam", target="tumour")
    scores = localisation_scores(result.cams, masks)
    # Measured on 32 such patches: hit rate 1.00 vs random 0.34, energy inside 0.90 (shipped
    # checkpoint) and 1.00 / 0.95 (3-epoch fixture); a 2-epoch model still gave 0.77 / 0.64.
    # Assert a margin well below what we measured.
    assert scores["random_point_rate"] < 0.5
    assert scores["pointing_hit_rate"] >= scores["random_point_rate"] + 0.3
    assert scores["energy_in_mask"] >= scores["random_point_rate"] + 0.2


def test_faithfulness_table_on_the_demo(demo_checkpoint, partial_tumours):
    _, images, masks = partial_tumours
    models = {"demo": load_checkpoint(demo_checkpoint)}
    table = faithfulness_table(
        models, images[:6], ["gradcam", "eigencam"], masks=masks[:6], percentiles=(20, 60)
    )
    assert list(table.columns[:3]) == ["model", "method", "n"]
    assert sorted(table["rank"]) == [1, 2] or list(table["rank"]) == [1, 1]
    assert np.isfinite(
        table[["road_morf", "road_lerf", "road_combined", "energy_in_mask"]].to_numpy()
    ).all()
    gradcam = table.set_index("method").loc["gradcam"]
    assert gradcam["pointing_hit_rate"] > gradcam["random_point_rate"]


def test_outcome_filter_selects_by_prediction(demo_root, demo_checkpoint):
    from core.evaluate import predict_split

    ds = open_dataset(demo_root / "pcam")
    preds = predict_split(demo_checkpoint, ds, split="test")
    by_outcome = {o: select_patches(ds, "test", None, o, preds) for o in ("TP", "FP", "FN", "TN")}
    assert sum(len(v) for v in by_outcome.values()) == len(ds.indices(split="test"))
    probs = preds.set_index("id")["prob"]
    for outcome, indices in by_outcome.items():
        ids = ds.meta["id"].to_numpy()[indices]
        labels = ds.meta["label"].to_numpy()[indices]
        assert (labels == (1 if outcome in ("TP", "FN") else 0)).all()
        called = probs.loc[ids].to_numpy() >= 0.5
        assert (called == (outcome in ("TP", "FP"))).all()
    tumour_test = select_patches(ds, "test", 1)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([by_outcome["TP"], by_outcome["FN"]])), np.sort(tumour_test)
    )
