"""One patch, one probability: Explain, Compare, their exports and the CLI report the same
calibrated P(tumour) and the same call at the card's threshold for the same patches.

The checkpoint is the shipped model trained on the demo PCam set, re-carded with a Platt map
far from the identity and a threshold far from 0.5, so the raw softmax (what Explain's captions
used to show) and its argmax (the old "predicted class" target) give other numbers and calls."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_checkpoint
from PIL import Image

from core.__main__ import main
from core.checkpoints import card_of, load_payload, save_checkpoint
from core.compare import evaluate_checkpoints, predictions_table
from core.data import open_dataset
from core.evaluate import predict_indices, split_indices

pytest.importorskip("pytorch_grad_cam", reason="needs grad-cam")
AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "checkpoints" / "demo_pcam_hcd_cnn.pt"
CALIBRATION = {"method": "platt", "a": 0.6, "b": -1.2}
THRESHOLD = 0.27
CAPTION = re.compile(r"^(?P<model>\S+) · \S+ — P\(tumour\) (?P<prob>[0-9.]+) → (?P<call>\w+)")


@pytest.fixture(scope="module")
def env(demo_root, tmp_path_factory):
    """A data root with the demo and a checkpoints folder: ``cal`` (trained, re-carded) and
    ``other`` (untrained, identity map, threshold 0.5) for Compare's second model."""
    import torch

    if not SHIPPED.exists():
        pytest.skip("needs the shipped demo checkpoint")
    root = tmp_path_factory.mktemp("one_probability")
    shutil.copytree(demo_root, root / "data" / "demo")
    payload = load_payload(SHIPPED)
    data = root / "data" / "demo" / "pcam"
    card = replace(
        card_of(payload, SHIPPED),
        calibration=CALIBRATION,
        threshold=THRESHOLD,
        dataset=str(data),
    )
    model, _ = __import__("core.models", fromlist=["build_model"]).build_model(card.arch)
    model.load_state_dict(payload["state_dict"])
    ckpts = root / "ckpts"
    save_checkpoint(ckpts / "cal.pt", model, card)
    torch.manual_seed(1)
    make_checkpoint(ckpts / "other.pt", seed=1, dataset=str(data), dataset_format="pcam")
    return root


@pytest.fixture
def app(env, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(env / "data"))
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(env / "ckpts"))
    monkeypatch.setenv("HISTOLENS_CACHE", str(env / "cache"))
    return env


@pytest.fixture
def reference(app, capsys):
    """`evaluate --json --predictions`: the CLI's metrics and its per-patch CSV, by patch id."""
    csv = app / "evaluate.csv"
    args = ["evaluate", "--checkpoint", str(app / "ckpts" / "cal.pt")]
    args += ["--data", str(app / "data" / "demo" / "pcam"), "--bootstrap", "0"]
    assert main([*args, "--json", "--predictions", str(csv)]) == 0
    result = json.loads(capsys.readouterr().out)
    return result, pd.read_csv(csv, dtype={"id": str}).set_index("id")


def test_the_cli_and_compare_csv_agree_and_differ_from_the_raw_softmax(app, reference):
    result, table = reference
    assert result["threshold"] == THRESHOLD and result["threshold_source"] == "card"
    assert (table["threshold:cal"] == THRESHOLD).all()
    assert (table["pred:cal"] == (table["prob:cal"] >= THRESHOLD)).all()
    labelled = table[table["label"] >= 0]
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    assert [tn, fp, fn, tp] == [
        int(((labelled["label"] == y) & (labelled["pred:cal"] == c)).sum())
        for y, c in ((0, 0), (0, 1), (1, 0), (1, 1))
    ]
    ds = open_dataset(app / "data" / "demo" / "pcam")
    raw = predict_indices(app / "ckpts" / "cal.pt", ds, split_indices(ds, "test"), calibrated=False)
    # the map and threshold matter on this model: the old numbers would not pass the checks below
    assert np.abs(raw - table["prob:cal"].to_numpy()).max() > 0.05
    assert ((raw >= 0.5) != table["pred:cal"].to_numpy().astype(bool)).any()

    preds = evaluate_checkpoints([app / "ckpts" / "cal.pt"], ds, "test")
    compare_csv = predictions_table(preds, {"cal": THRESHOLD}).set_index("id")
    pd.testing.assert_series_equal(compare_csv["prob:cal"], table["prob:cal"], check_dtype=False)
    assert (compare_csv["pred:cal"] == table["pred:cal"]).all()


def test_the_explain_command_prints_the_same_probability_and_call(app, reference, capsys):
    _, table = reference
    ds = open_dataset(app / "data" / "demo" / "pcam")
    ids = ds.meta["id"].astype(str).to_numpy()
    raw = predict_indices(app / "ckpts" / "cal.pt", ds, split_indices(ds, "test"), calibrated=False)
    disputed = np.flatnonzero((raw >= 0.5) != table["pred:cal"].to_numpy().astype(bool))
    for k in disputed[:2]:  # patches whose old caption and old CAM target were wrong
        index = int(split_indices(ds, "test")[k])
        png = app / f"patch_{index}.png"
        Image.fromarray(ds.read(index)).save(png)
        out = app / f"overlay_{index}.png"
        args = ["explain", "--checkpoint", str(app / "ckpts" / "cal.pt"), "--image", str(png)]
        assert main([*args, "--out", str(out)]) == 0
        stdout = capsys.readouterr().out
        found = re.search(r"P\(tumour\) ([0-9.]+) → (\w+) at the card's threshold 0.270", stdout)
        row = table.loc[ids[index]]
        assert float(found.group(1)) == pytest.approx(row["prob:cal"], abs=1e-4)
        called = ("normal", "tumour")[int(row["pred:cal"])]
        assert found.group(2) == called and f"map of class {called!r}" in stdout


def captions_by_patch(at) -> dict[str, list[re.Match]]:
    """{patch id: the P(tumour) captions of the overlays beside it} from the Explain grid."""
    out: dict[str, list] = {}
    patch = None
    for element in at.image:
        for caption in element.captions:
            found = CAPTION.match(caption)
            if found is None:
                patch = caption
                out.setdefault(patch, [])
            elif patch is not None:
                out[patch].append(found)
    return out


def test_explain_page_captions_and_outcome_filter_use_the_calibrated_call(app, reference):
    _, table = reference
    at = AppTest.from_file(str(REPO / "pages" / "explain.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    at.multiselect(key="explain_models").set_value(["cal"]).run()
    box = at.selectbox(key="explain_dataset")
    box.select_index(next(i for i, e in enumerate(box.options) if "pcam" in e)).run()
    at.selectbox(key="explain_split").set_value("test").run()
    for outcome in ("all", "FP", "FN"):
        at.selectbox(key="explain_outcome").set_value(outcome).run()
        assert not at.exception, at.exception
        shown = captions_by_patch(at)
        assert shown, f"no patches shown for outcome {outcome}"
        for patch, found in shown.items():
            row = table.loc[patch]
            called = ("normal", "tumour")[int(row["pred:cal"])]
            assert [m["model"] for m in found] == ["cal"]
            assert float(found[0]["prob"]) == pytest.approx(row["prob:cal"], abs=6e-4)
            assert found[0]["call"] == called
            if outcome != "all":  # FP: normal called tumour; FN: tumour called normal
                assert (int(row["label"]), int(row["pred:cal"])) == (
                    outcome == "FN",
                    outcome == "FP",
                )
    assert any("threshold (cal 0.270)" in c.value for c in at.caption)


def test_compare_page_states_the_same_probability_and_call(app, reference):
    _, table = reference
    at = AppTest.from_file(str(REPO / "pages" / "compare.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    captions = [img.caption for e in at.get("image") for img in e.proto.imgs]
    checked = 0
    for caption in captions:
        found = CAPTION.match(caption)
        if found and found["model"] == "cal":
            patch = next(c for c in reversed(captions[: captions.index(caption)]) if "· true" in c)
            row = table.loc[patch.split(" · ")[0]]
            assert float(found["prob"]) == pytest.approx(row["prob:cal"], abs=6e-4)
            assert found["call"] == ("normal", "tumour")[int(row["pred:cal"])]
            checked += 1
    assert checked > 0
    assert at.slider(key="compare_threshold::cal").value == pytest.approx(THRESHOLD)
