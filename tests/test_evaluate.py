"""core.evaluate: predictions on a split, the parquet cache, D4 TTA, patient aggregation."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
from helpers import EXACT, make_checkpoint
from sklearn.metrics import roc_auc_score

from core import evaluate
from core.checkpoints import load_checkpoint
from core.config import REPO_ROOT
from core.d4 import D4_GROUP
from core.data import open_dataset
from core.preprocess import predict_proba


@pytest.fixture
def pcam(demo_root):
    return open_dataset(demo_root / "pcam")


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "a.pt")


@pytest.fixture
def forward_counter(monkeypatch):
    """Counts model forward calls of every checkpoint predict_split loads."""
    calls = {"forward": 0, "load": 0}
    real_load = load_checkpoint

    def counting_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        calls["load"] += 1
        loaded.model.register_forward_hook(
            lambda *_: calls.__setitem__("forward", calls["forward"] + 1)
        )
        return loaded

    monkeypatch.setattr("core.checkpoints.load_checkpoint", counting_load)
    return calls


def test_predictions_cover_the_split_and_match_direct_inference(pcam, ckpt):
    preds = evaluate.predict_split(ckpt, pcam, split="test", batch_size=16, **EXACT)
    assert preds.attrs == EXACT
    indices = pcam.indices(split="test")
    assert len(preds) == len(indices) > 0
    assert preds["index"].tolist() == sorted(indices.tolist())
    assert preds["id"].tolist() == pcam.meta["id"].iloc[preds["index"]].tolist()
    assert preds["label"].tolist() == pcam.meta["label"].iloc[preds["index"]].tolist()
    assert preds["prob"].between(0, 1).all()
    images = pcam.read_batch(preds["index"].to_numpy())
    direct = predict_proba(load_checkpoint(ckpt), images, precision="fp32")
    np.testing.assert_allclose(preds["prob"], direct, atol=1e-5)


def test_second_evaluation_is_served_from_cache_without_forward(pcam, ckpt, forward_counter):
    progress = []
    first = evaluate.predict_split(
        ckpt, pcam, batch_size=8, progress=lambda done, total: progress.append((done, total))
    )
    assert forward_counter["forward"] == -(-len(first) // 8)  # one forward per batch
    assert progress[-1] == (len(first), len(first))
    cache = evaluate.prediction_cache_path(ckpt, pcam, "test", False, **first.attrs)
    assert cache.exists() and cache.is_relative_to(evaluate.config.cache_dir())

    forward_counter.update(forward=0, load=0)
    progress.clear()
    second = evaluate.predict_split(
        ckpt, pcam, batch_size=8, progress=lambda done, total: progress.append((done, total))
    )
    assert forward_counter == {"forward": 0, "load": 0}
    assert progress == [(len(first), len(first))]  # a progress bar still completes
    pd.testing.assert_frame_equal(first, second)


def test_cache_key_changes_with_split_tta_and_weights(pcam, ckpt, tmp_path, forward_counter):
    key = evaluate.prediction_cache_path
    base = key(ckpt, pcam, "test", False)
    assert len({base, key(ckpt, pcam, "valid", False), key(ckpt, pcam, "test", True)}) == 3
    evaluate.predict_split(ckpt, pcam)
    make_checkpoint(ckpt, seed=1)  # retrained: same path, new weights
    assert key(ckpt, pcam, "test", False) != base
    forward_counter.update(forward=0)
    evaluate.predict_split(ckpt, pcam)
    assert forward_counter["forward"] > 0


def test_tta_is_the_mean_over_the_eight_dihedral_views(pcam, ckpt):
    indices = pcam.indices(split="test")[:6]
    tta = evaluate.predict_indices(ckpt, pcam, indices, tta=True, batch_size=4, **EXACT)
    images = pcam.read_batch(indices)
    loaded = load_checkpoint(ckpt)
    nchw = images.transpose(0, 3, 1, 2)
    views = [np.ascontiguousarray(view.apply(nchw).transpose(0, 2, 3, 1)) for view in D4_GROUP]
    expected = np.mean([predict_proba(loaded, v, precision="fp32") for v in views], axis=0)
    np.testing.assert_allclose(tta, expected, atol=1e-5)
    assert not np.allclose(evaluate.predict_indices(ckpt, pcam, indices, **EXACT), tta)


def test_bf16_and_fp32_agree_in_auc_and_are_cached_apart(demo_root, forward_counter):
    """The shipped demo checkpoint on the demo PCam test split, on the default device (CUDA
    where there is one): bf16 autocast moves the AUC by less than 1e-3, and a cache written in
    one precision is never served as the other's."""
    ckpt = REPO_ROOT / "checkpoints" / "demo_pcam_hcd_cnn.pt"
    pcam = open_dataset(demo_root / "pcam")
    fp32 = evaluate.predict_split(ckpt, pcam, precision="fp32")
    bf16 = evaluate.predict_split(ckpt, pcam, precision="bf16")
    assert (fp32.attrs["precision"], bf16.attrs["precision"]) == ("fp32", "bf16")
    assert forward_counter["load"] == 2  # the bf16 request did not read the fp32 cache
    auc = [roc_auc_score(p["label"], p["prob"]) for p in (fp32, bf16)]
    assert auc[0] > 0.9 and abs(auc[0] - auc[1]) < 1e-3, auc
    assert 0 < np.abs(fp32["prob"] - bf16["prob"]).max() < 0.05  # really two computations
    device = fp32.attrs["device"]
    paths = {
        evaluate.prediction_cache_path(ckpt, pcam, "test", False, device, p)
        for p in ("fp32", "bf16")
    }
    assert len(paths) == 2 and all(path.exists() for path in paths)
    report = evaluate.evaluate_checkpoint(ckpt, pcam, precision="bf16", n_boot=0)  # cached
    assert report["computed_with"] == {"device": device, "precision": "bf16"}
    assert report["auc"] == pytest.approx(auc[1])


def test_split_all_and_unknown_split(pcam, ckpt):
    assert len(evaluate.split_indices(pcam, "all")) == len(pcam)
    with pytest.raises(ValueError, match="unknown split"):
        evaluate.predict_split(ckpt, pcam, split="holdout")


def test_prefetch_keeps_order_and_reraises_loader_errors():
    assert list(evaluate.prefetch(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(evaluate.prefetch(failing()))


def _prefetch_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "histolens-prefetch" and t.is_alive()]


def test_a_failing_batch_stops_the_reading_thread_before_the_error_travels(pcam, ckpt, monkeypatch):
    """Left running, the reader could hold h5py's lock while the interpreter exits: the CLI
    printed the traceback and then hung on PCam."""
    calls = []

    def fails_second(model, x, *args):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("a kernel failed")
        return np.full(len(x), 0.5, np.float32)

    monkeypatch.setattr(evaluate, "forward_probs", fails_second)
    with pytest.raises(RuntimeError, match="a kernel failed") as err:
        evaluate.predict_split(ckpt, pcam, split="all", batch_size=8)
    assert err.value.__traceback__ is not None  # the failed frame, and its generator, live on
    assert not _prefetch_threads()


def test_out_of_memory_is_one_line_naming_the_batch_size(pcam, ckpt, monkeypatch, capsys):
    from core.__main__ import main

    def oom(*args):
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 17 GB"
        )

    monkeypatch.setattr(evaluate, "forward_probs", oom)
    with pytest.raises(ValueError, match="out of memory predicting batches of 8 at 50×50 px"):
        evaluate.predict_split(ckpt, pcam, split="all", batch_size=8)
    assert not _prefetch_threads()
    args = ["evaluate", "--checkpoint", str(ckpt), "--data", str(pcam.root), "--batch-size", "8"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "give a smaller --batch-size" in lines[-1]
    assert not any("Traceback" in line for line in lines)


def test_idc_patient_table_aggregates_per_patient(demo_root, tmp_path):
    idc = open_dataset(demo_root / "idc")
    ckpt = make_checkpoint(tmp_path / "idc.pt", arch="idc_cnn")
    preds = evaluate.predict_split(ckpt, idc, split="all")
    assert {"patient", "x", "y"} <= set(preds.columns)
    table = evaluate.patient_table(preds, threshold=0.5)
    known = preds[preds["label"] >= 0]
    assert sorted(table["patient"]) == sorted(known["patient"].unique())
    assert table["n"].sum() == len(known)
    by_hand = known.groupby("patient")["label"].mean()
    np.testing.assert_allclose(
        table.set_index("patient")["tumour_fraction"], by_hand.loc[table["patient"]]
    )
    summary = evaluate.patient_summary(preds)
    assert summary["n_patients"] == len(table)
    assert 0 <= summary["burden_mae"] <= 1
    assert summary["aggregation"] == "max"
    result = evaluate.evaluate_checkpoint(ckpt, idc, split="all", n_boot=20)
    assert result["patients"]["aggregation"] == "max"
    # a handful of fake patients: the interval resamples patches and says why (issue 27)
    assert result["ci_unit"] == "patch" and result["ci_note"].startswith("patches, not patients")


def test_patient_table_is_empty_without_patients(pcam, ckpt):
    preds = evaluate.predict_split(ckpt, pcam).drop(columns=["patient"], errors="ignore")
    assert evaluate.patient_table(preds).empty
    assert evaluate.patient_summary(preds) is None


def test_card_calibration_and_threshold_reach_every_consumer(pcam, tmp_path):
    plain = make_checkpoint(tmp_path / "plain.pt")
    card_fields = dict(calibration={"method": "platt", "a": 0.5, "b": -1.0}, threshold=0.3)
    calibrated = make_checkpoint(tmp_path / "calibrated.pt", **card_fields)
    images = pcam.read_batch(pcam.indices(split="test")[:8])
    raw = predict_proba(load_checkpoint(plain), images)  # no map in the card: identity
    mapped = predict_proba(load_checkpoint(calibrated), images)
    expected = 1 / (1 + np.exp(-(0.5 * np.log(raw / (1 - raw)) - 1.0)))
    np.testing.assert_allclose(mapped, expected, atol=1e-5)

    by_card = evaluate.evaluate_checkpoint(calibrated, pcam, n_boot=0)
    assert by_card["threshold"] == 0.3 and by_card["threshold_source"] == "card"
    by_cli = evaluate.evaluate_checkpoint(calibrated, pcam, threshold=0.6, n_boot=0)
    assert by_cli["threshold"] == 0.6 and by_cli["threshold_source"] == "cli"
    older = evaluate.evaluate_checkpoint(plain, pcam, n_boot=20)
    assert older["threshold"] == 0.5 and older["threshold_source"] == "card"
    assert older["patients"]["aggregation"] == "max"  # meta csv: slides are patients
    assert older["auc_ci"]["unit"] == "patch" and "patient(s)" in older["ci_note"]  # too few


def test_where_predictions_run_is_known_without_torch_on_a_machine_without_gpus():
    """Importing torch took most of a cached ``compare`` (issue 27, item 6): on the CPU (asked
    for, or the only device) the cache key's device and precision need no torch, and they are
    what core.device resolves."""
    from core.device import resolve_device, resolve_precision

    if not evaluate._no_gpu():
        pytest.skip("this machine has GPU device files (or --like-cuda): torch decides")
    code = (
        "import sys; from core.evaluate import how_it_runs as h; print(h(), 'torch' in sys.modules)"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert shown == "{'device': 'cpu', 'precision': 'fp32'} False"
    for device in (None, "auto", "cpu"):
        for precision in ("auto", "fp32", "bf16"):
            resolved = resolve_device(device or "auto")
            expected = {
                "device": resolved.type,
                "precision": resolve_precision(precision, resolved),
            }
            assert evaluate.how_it_runs(device, precision) == expected
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluate.how_it_runs("cpu", "fp16")
