"""core.compare on hand-made predictions, and the `evaluate` / `compare` commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import make_checkpoint
from sklearn.metrics import roc_auc_score

from core import compare, metrics
from core.__main__ import main
from core.catalogue import trained_on_index
from core.figures import roc_figure


def _preds(seed=0, n=200):
    """Two models' predictions on the same labelled patches (plus one unlabelled patch)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    label[-1] = -1
    base = pd.DataFrame({"index": np.arange(n), "id": [f"p{i}" for i in range(n)], "label": label})
    good = np.clip(0.6 * (label == 1) + rng.normal(0.2, 0.2, n), 0, 1)
    weak = np.clip(0.3 * (label == 1) + rng.normal(0.35, 0.25, n), 0, 1)
    return {"good": base.assign(prob=good), "weak": base.assign(prob=weak)}


def test_model_names_are_short_and_unique(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_CHECKPOINTS", str(tmp_path / "ckpts"))
    shipped = [tmp_path / "ckpts" / "demo_a.pt", tmp_path / "ckpts" / "demo_b.pt"]
    assert compare.model_names(shipped) == ["demo_a", "demo_b"]
    assert compare.model_names(["run1/best.pt", "run2/best.pt"]) == ["run1", "run2"]
    assert compare.model_names([shipped[0], "run1/best.pt"]) == ["demo_a", "run1"]
    assert compare.model_names(["x/run/best.pt", "y/run/best.pt"]) == [
        "x/run/best.pt",
        "y/run/best.pt",
    ]


def test_at_thresholds_uses_each_models_own_threshold():
    preds = _preds()
    at = compare.at_thresholds(preds, {"good": 0.5, "weak": 0.4})
    for name, t in (("good", 0.5), ("weak", 0.4)):
        known = preds[name][preds[name]["label"] >= 0]
        expected = metrics.binary_metrics(known["label"], known["prob"], t)
        assert at.confusion[name].tolist() == expected["confusion_matrix"]
        assert at.table.loc[name, "f1"] == pytest.approx(expected["f1"])
        assert at.table.loc[name, "n"] == len(known)
    moved = compare.at_thresholds(preds, {"good": 0.8, "weak": 0.4})
    assert moved.confusion["good"].tolist() != at.confusion["good"].tolist()
    assert moved.confusion["weak"].tolist() == at.confusion["weak"].tolist()


def test_paired_tests_count_discordant_patches():
    preds = _preds()
    paired = compare.paired_tests(preds, 0.5)
    assert len(paired) == 1
    row = paired.iloc[0]
    known = [frame[frame["label"] >= 0] for frame in preds.values()]
    right = [(f["prob"] >= 0.5).astype(int).to_numpy() == f["label"].to_numpy() for f in known]
    assert row["a_right_b_wrong"] == np.sum(right[0] & ~right[1])
    assert row["a_wrong_b_right"] == np.sum(~right[0] & right[1])
    assert row["auc_diff"] == pytest.approx(
        roc_auc_score(known[0]["label"], known[0]["prob"])
        - roc_auc_score(known[1]["label"], known[1]["prob"])
    )
    assert row["delong_p"] < 0.05  # "good" is clearly better on 199 patches


@pytest.mark.parametrize("kind", list(compare.DISAGREEMENT_KINDS))
def test_disagreements_select_and_sort(kind):
    preds = _preds()
    table = compare.disagreements(preds, {"good": 0.5, "weak": 0.45}, kind=kind)
    calls = table[["pred:good", "pred:weak"]].to_numpy()
    differ = calls[:, 0] != calls[:, 1]
    wrong = (calls != table["label"].to_numpy()[:, None]).all(axis=1)
    selected = {"disagree": differ, "all_wrong": wrong, "disagree_or_all_wrong": differ | wrong}
    assert len(table) > 0 and selected[kind].all()
    assert table["confidence"].is_monotonic_decreasing
    # nothing that qualifies is left out
    joined = compare.joined(preds)
    good, weak = (joined["prob:good"] >= 0.5), (joined["prob:weak"] >= 0.45)
    lab = joined["label"] == 1
    expected = {
        "disagree": good != weak,
        "all_wrong": (good != lab) & (weak != lab),
        "disagree_or_all_wrong": (good != weak) | ((good != lab) & (weak != lab)),
    }[kind]
    assert len(table) == expected.sum()


def test_threshold_free_curves_and_legend_show_auc_with_ci():
    pytest.importorskip("plotly", reason="needs plotly")
    preds = _preds()
    free = compare.threshold_free(preds, n_boot=100, seed=0)
    lo, hi = free["good"].auc_ci.bounds
    assert lo < free["good"].auc < hi
    fig = roc_figure(free, at=compare.at_thresholds(preds, 0.5))
    names = [trace.name for trace in fig.data]
    assert any(n.startswith("good<br>AUC") and "95% CI" in n for n in names)
    assert any(n.startswith("weak @ 0.500") for n in names)


def test_predictions_export_keeps_unlabelled_patches_and_says_how_each_column_was_made():
    preds = _preds()
    preds["good"].attrs.update(device="cuda", precision="bf16")  # as predict_split sets them
    table = compare.predictions_table(preds, {"good": 0.5, "weak": 0.3})
    assert len(table) == 200 and (table["label"] == -1).sum() == 1
    assert (table["pred:weak"] == (table["prob:weak"] >= 0.3)).all()
    assert set(table["threshold:weak"]) == {0.3} and set(table["threshold:good"]) == {0.5}
    assert set(table["device:good"]) == {"cuda"} and set(table["precision:good"]) == {"bf16"}
    assert set(table["device:weak"]) == {"unknown"}  # frames without attrs are not guessed
    assert len(compare.joined(preds)) == 199


def test_metrics_json_keyed_by_model_with_paired_tests():
    out = compare.metrics_json(_preds(), 0.5, n_boot=50)
    assert set(out) == {"good", "weak"}
    assert set(out["good"]["paired"]) == {"weak"}
    json.dumps(out)  # JSON-able


def test_each_models_paired_results_are_read_from_its_own_side():
    """Under weak -> paired -> good, auc_diff carried good − weak and a_right_b_wrong counted
    good's wins: the first model's row copied unchanged (issue 27, item 4)."""
    preds = _preds()
    out = compare.metrics_json(preds, 0.5, n_boot=0)
    known = {n: f[f["label"] >= 0] for n, f in preds.items()}
    auc = {n: roc_auc_score(f["label"], f["prob"]) for n, f in known.items()}
    right = {n: ((f["prob"] >= 0.5).astype(int) == f["label"]).to_numpy() for n, f in known.items()}
    for this, other in (("good", "weak"), ("weak", "good")):
        row = out[this]["paired"][other]
        assert (row["model_a"], row["model_b"]) == (this, other)
        assert row["auc_diff"] == pytest.approx(auc[this] - auc[other])
        assert row["a_right_b_wrong"] == np.sum(right[this] & ~right[other])
        assert row["a_wrong_b_right"] == np.sum(~right[this] & right[other])
        assert np.sign(row["delong_z"]) == np.sign(row["auc_diff"])
    assert out["good"]["paired"]["weak"]["delong_p"] == out["weak"]["paired"]["good"]["delong_p"]


def test_every_p_value_and_interval_names_its_test_and_unit():
    preds = _preds()
    out = compare.metrics_json(preds, 0.5, n_boot=50)
    row = out["good"]["paired"]["weak"]
    assert row["mcnemar_test"] == "McNemar exact binomial, patches"
    assert row["delong_test"] == "DeLong, patches" and row["test_unit"] == "patch"
    assert out["good"]["auc_ci"]["unit"] == "patch" and out["good"]["auc_ci"]["n_boot"] == 50
    # 12 patients, 2 models: clustered tests, named so
    patients = [f"pt{i % 12}" for i in range(200)]
    clustered = {n: f.assign(patient=patients) for n, f in preds.items()}
    row = compare.metrics_json(clustered, 0.5, n_boot=50)["good"]["paired"]["weak"]
    assert row["mcnemar_test"] == "McNemar clustered χ² (Durkalski), patients"
    assert row["delong_test"] == "DeLong clustered (Obuchowski), patients"
    assert row["test_unit"] == "patient" and row["unit_note"] == ""
    # 3 patients: patches, and the row says why
    few = {n: f.assign(patient=[f"pt{i % 3}" for i in range(200)]) for n, f in preds.items()}
    row = compare.metrics_json(few, 0.5, n_boot=50)["good"]["paired"]["weak"]
    assert row["test_unit"] == "patch" and row["unit_note"].startswith("patches, not patients")
    assert row["mcnemar_test"] == "McNemar exact binomial, patches"


def test_dataset_preselected_from_the_checkpoint_card(demo_root, tmp_path):
    from core.data import list_datasets

    entries = list_datasets(demo_root)
    pcam = next(k for k, e in enumerate(entries) if e.format == "pcam")
    idc = next(k for k, e in enumerate(entries) if e.format == "idc")
    by_path = make_checkpoint(tmp_path / "a.pt", dataset=str(demo_root / "pcam"))
    by_format = make_checkpoint(tmp_path / "b.pt", dataset="elsewhere/x", dataset_format="idc")
    assert trained_on_index(entries, by_path) == pcam
    assert trained_on_index(entries, by_format) == idc
    assert trained_on_index(entries, tmp_path / "missing.pt") == 0


def test_evaluate_and_compare_commands(demo_root, tmp_path, capsys):
    a = make_checkpoint(tmp_path / "a.pt", seed=0)
    b = make_checkpoint(tmp_path / "b.pt", seed=1, arch="hcd_cnn")
    data = str(demo_root / "pcam")

    assert main(["evaluate", "--checkpoint", str(a), "--data", data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    needed = {"n", "auc", "accuracy", "balanced_accuracy", "f1", "precision", "recall"}
    assert needed | {"confusion_matrix"} <= set(result)
    assert np.sum(result["confusion_matrix"]) == result["n"]

    args = ["compare", "--checkpoints", str(a), str(b), "--data", data, "--bootstrap", "50"]
    assert main([*args, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) == {str(a), str(b)}
    assert isinstance(table[str(a)]["n"], int)  # counts stay integers in JSON
    assert table[str(a)]["auc"] == pytest.approx(result["auc"])  # same cached predictions
    assert main(args) == 0
    text = capsys.readouterr().out
    # the demo PCam test split has two slides: patches are the unit, and the text says why
    assert "McNemar exact binomial, patches p=" in text and "DeLong, patches p=" in text
    assert "percentile bootstrap over patches" in text and "patches, not patients" in text

    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", data]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.pt" in err and len(err.splitlines()) == 1


def test_a_split_without_labels_is_one_line_in_compare_as_in_evaluate(tmp_path, capsys):
    """An empty test split: compare gave sklearn's 'Found empty input array'."""
    import h5py
    from helpers import write_fake_pcam

    fake = write_fake_pcam(tmp_path / "pcam")
    for key, shape in (("x", (0, 96, 96, 3)), ("y", (0, 1, 1, 1))):
        with h5py.File(fake.root / f"camelyonpatch_level_2_split_test_{key}.h5", "w") as f:
            f.create_dataset(key, shape=shape, dtype="u1")
    a, b = make_checkpoint(tmp_path / "a.pt", seed=0), make_checkpoint(tmp_path / "b.pt", seed=1)
    data = ["--data", str(fake.root), "--split", "test"]
    assert main(["evaluate", "--checkpoint", str(a), *data]) == 2
    assert "no labelled patches to evaluate" in capsys.readouterr().err
    assert main(["compare", "--checkpoints", str(a), str(b), *data]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split 'test' has no labelled patches to compare" in err[0]


def test_each_model_has_one_colour_across_roc_pr_and_reliability():
    """Issue 13, item 6: one model had three colours across the three charts."""
    pytest.importorskip("plotly", reason="needs plotly")
    from core import figures

    free = compare.threshold_free(_preds(), n_boot=10, seed=0)
    charts = [figures.roc_figure(free), figures.pr_figure(free), figures.reliability_figure(free)]
    for k, name in enumerate(free):
        colours = {
            t.line.color for fig in charts for t in fig.data if t.name.startswith(f"{name} (")
        }
        assert colours == {figures.model_colour(k)}
    assert figures.model_colour(0) != figures.model_colour(1)


def test_the_learning_rate_axis_reads_as_a_number():
    """Not "900µ": plotly's SI prefixes suit lengths, not learning rates."""
    pytest.importorskip("plotly", reason="needs plotly")
    from core import figures

    frame = pd.DataFrame(
        {"step": [1, 2, 3], "split": "train", "loss": 0.5, "accuracy": 0.5, "auc": 0.5,
         "lr": [9e-4, 8e-4, 7e-4]}
    )  # fmt: skip
    fig = figures.curves_figure({"run": frame})
    assert fig.layout.yaxis4.exponentformat == "e"
