"""core.train in-process: config checks, device choice, loaders, augmentation, evaluate, fit,
resume, early stopping, failure and cancellation written to the run directory."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import quick, write_idc_tree
from sklearn.metrics import roc_auc_score
from torch import nn

from core import run_folder
from core.checkpoints import ModelCard, load_checkpoint, load_payload
from core.d4 import D4_GROUP
from core.data import DatasetError, open_dataset
from core.models import build_model
from core.train import (
    Augmentation,
    BatchReader,
    Dist,
    Runtime,
    TrainConfig,
    TrainingCancelled,
    build_scheduler,
    class_weights,
    evaluate,
    fit,
    make_loader,
    resolve_device,
    seed_everything,
)


@pytest.mark.parametrize(
    "bad",
    [
        dict(epochs=0),
        dict(lr=0),
        dict(scheduler="step"),
        dict(device="tpu"),
        dict(img_size=8),
        dict(label_smoothing=1.0),
        dict(epochs=10, warmup_epochs=10),  # as many as the epochs: no cosine left
        dict(seed=-1),
        dict(split_seed=2**31),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="Invalid training config"):
        TrainConfig(data="x", **bad)


def test_config_is_frozen_and_round_trips_through_dict():
    cfg = TrainConfig(data="x", epochs=3)
    with pytest.raises(FrozenInstanceError):
        cfg.epochs = 4
    assert TrainConfig.from_dict({**cfg.__dict__, "unknown_key": 1}) == cfg


def test_a_run_written_before_split_seed_keeps_the_split_its_seed_drew(tmp_path):
    """Before the two seeds were apart, ``seed`` drew the split: resuming such a run (its
    config.json has no split_seed) must not move its test patients to another split, while a
    new run with ``--seed`` alone stays on split 0."""
    from core.__main__ import build_parser
    from core.commands.train import config_from_args

    def parsed(*argv, saved=None):
        return config_from_args(build_parser().parse_args(["train", *argv]), saved)

    old, new = tmp_path / "old", tmp_path / "new"
    run_folder.write_config(old, {"data": "x", "seed": 3})
    run_folder.write_config(new, {"data": "x", "seed": 3, "split_seed": 0})
    assert parsed("--resume", str(old), saved=run_folder.read_config(old)).split_seed == 3
    assert parsed("--resume", str(new), saved=run_folder.read_config(new)).split_seed == 0
    assert parsed("--data", "x", "--out", "o", "--seed", "3").split_seed == 0
    assert parsed("--data", "x", "--out", "o", "--seed", "3", "--split-seed", "2").split_seed == 2
    assert TrainConfig.from_dict({"data": "x", "seed": 3}).split_seed == 0  # the page's path


def test_training_seeds_share_the_split_and_the_card_says_which(demo_root, tmp_path):
    """Models trained with different seeds are scored on the same unseen patients (Compare,
    evaluate) unless --split-seed says otherwise; the card records both seeds."""
    root = demo_root / "idc"
    cards = {}
    for seed, split_seed in ((1, 0), (1, 4)):
        run = tmp_path / f"s{seed}-split{split_seed}"
        fit(quick(root, seed=seed, split_seed=split_seed, limit_batches=1), run)
        cards[split_seed] = load_checkpoint(run / "best.pt").card
    assert open_dataset(root, seed=0).manifest_id != open_dataset(root, seed=4).manifest_id
    for split_seed, card in cards.items():
        assert (card.seed, card.split_seed, card.data_split_seed) == (1, split_seed, split_seed)
        assert card.split_manifest_id == open_dataset(root, seed=split_seed).manifest_id


def test_resolve_device_prefers_accelerators_and_refuses_missing_ones():
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_seed_everything_makes_initial_weights_reproducible():
    seed_everything(3)
    a = nn.Linear(4, 2).weight.detach().clone()
    seed_everything(3)
    b = nn.Linear(4, 2).weight.detach().clone()
    seed_everything(4)
    c = nn.Linear(4, 2).weight.detach().clone()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_class_weights_balance_the_classes():
    weights = class_weights(np.array([0, 0, 0, 1]))
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2]))
    # each class then carries the same total weight
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)


def test_warmup_ramps_the_lr_linearly_then_follows_the_cosine():
    cfg = TrainConfig(data="x", epochs=4, lr=1.0, warmup_epochs=1)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55)
    assert lrs[10] == pytest.approx(1.0) and lrs[25] == pytest.approx(0.5)
    assert lrs == sorted(lrs[:11]) + sorted(lrs[11:], reverse=True)


def test_augmentation_without_jitter_is_a_d4_transform_of_each_patch():
    images = torch.randint(0, 256, (8, 12, 12, 3), dtype=torch.uint8)
    plain = Augmentation(stain_scale=0, stain_shift=0, brightness=0)
    out = plain(images, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for original, augmented in zip(images, out, strict=True):
        chw = original.permute(2, 0, 1)
        candidates = [t.apply(chw).permute(1, 2, 0) for t in D4_GROUP]
        # exp(log(x)) round trip may move a value by one grey level
        assert min((c.int() - augmented.int()).abs().max().item() for c in candidates) <= 1
    again = plain(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_stain_jitter_is_light_but_real():
    images = torch.full((16, 8, 8, 3), 150, dtype=torch.uint8)
    out = Augmentation()(images, torch.Generator().manual_seed(1))
    diff = (out.float() - images.float()).abs().mean(dim=(1, 2, 3))
    assert diff.max() < 20  # light: a few grey levels
    assert (diff > 0.5).sum() >= 8  # but most patches change


def test_loaders_shard_train_and_cover_valid_exactly_once(demo_root):
    ds = open_dataset(demo_root / "idc")
    reader = BatchReader(ds, ds.indices(split="train"))
    args = dict(seed=0, workers=0, pin_memory=False)
    seen = []
    for rank in (0, 1):
        loader = make_loader(reader, 32, shuffle=True, dist_info=Dist(rank, 2), **args)
        positions = [p for batch in loader.sampler for p in batch]
        seen.append(set(positions))
        images, labels = next(iter(loader))
        assert images.dtype == torch.uint8 and images.shape[1:] == (50, 50, 3)
        assert labels.dtype == torch.int64
    assert not seen[0] & seen[1]
    valid = BatchReader(ds, ds.indices(split="valid"))
    shards = [
        [
            p
            for b in make_loader(valid, 32, shuffle=False, dist_info=Dist(r, 2), **args).sampler
            for p in b
        ]
        for r in (0, 1)
    ]
    assert sorted(shards[0] + shards[1]) == list(range(len(valid)))


def test_worker_processes_read_the_same_batches_as_the_main_process(demo_root):
    ds = open_dataset(demo_root / "pcam")  # h5: every worker must open its own handle
    ds.read(0)  # a handle already open in the parent must not leak into the workers
    reader = BatchReader(ds, ds.indices(split="valid")[:96])
    args = dict(shuffle=False, seed=0, dist_info=Dist(), pin_memory=False)
    in_main = list(make_loader(reader, 32, workers=0, **args))
    in_workers = list(make_loader(reader, 32, workers=2, **args))
    assert len(in_main) == len(in_workers) == 3
    for (a, la), (b, lb) in zip(in_main, in_workers, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


class Darkness(nn.Module):
    """Logit of tumour = how dark the patch is (the toy IDC tree's tumour patches are dark)."""

    def forward(self, x):
        score = 0.5 - x.mean(dim=(1, 2, 3))  # inputs are in [0, 1] (idc_cnn card)
        return torch.stack([-score, score], dim=1)


class Undecided(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 2)


def test_evaluate_matches_scikit_learn(tmp_path):
    ds = open_dataset(write_idc_tree(tmp_path / "idc", patients=6))
    reader = BatchReader(ds, np.arange(len(ds)))
    loader = make_loader(
        reader, 7, shuffle=False, seed=0, dist_info=Dist(), workers=0, pin_memory=False
    )
    rt = Runtime(torch.device("cpu"), ModelCard.for_model("idc_cnn"))
    result = evaluate(Darkness(), loader, nn.CrossEntropyLoss(), rt)
    assert result["n"] == len(ds)
    assert result["auc"] == pytest.approx(1.0) and result["accuracy"] == pytest.approx(1.0)
    # an undecided model: P = 0.5 everywhere -> AUC 0.5, loss ln 2, every patch called tumour
    undecided = evaluate(Undecided(), loader, nn.CrossEntropyLoss(), rt)
    assert undecided["auc"] == pytest.approx(roc_auc_score(reader.labels, np.full(len(ds), 0.5)))
    assert undecided["loss"] == pytest.approx(np.log(2))
    assert undecided["accuracy"] == pytest.approx(reader.labels.mean())


def test_fit_writes_the_run_directory_with_full_checkpoints(demo_root, tmp_path):
    run = tmp_path / "run"
    status = fit(quick(demo_root / "idc", epochs=2), run)
    assert status["state"] == "finished" and status["epochs_run"] == 2
    for name in ("config.json", "metrics.jsonl", "status.json", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "bn_cnn" and config["img_size"] == 50  # resolved from the data
    metrics = run_folder.read_metrics(run)
    assert set(metrics["split"]) == {"train", "valid"}
    assert list(metrics.loc[metrics.split == "valid", "epoch"]) == [0, 1]
    assert metrics["step"].is_monotonic_increasing
    for name in ("best.pt", "last.pt"):
        loaded = load_checkpoint(run / name)
        card = loaded.card
        assert card.arch == "bn_cnn" and card.input_size == 50 and card.dataset_format == "idc"
        assert card.split_manifest_id == open_dataset(demo_root / "idc").manifest_id
        assert card.synthetic_data and card.train_config["epochs"] == 2
        assert 0 <= card.metrics["valid_auc"] <= 1
    last = load_payload(run / "last.pt")
    assert last["loop"]["epoch"] == 2 and last["optimizer"]["state"]


def test_fit_learns_calibration_and_operating_point_on_validation(demo_root, tmp_path):
    run = tmp_path / "run"
    status = fit(quick(demo_root / "idc", epochs=1, class_weighting=True), run)
    card = load_checkpoint(run / "best.pt").card
    assert card.calibration["method"] in ("platt", "identity")  # identity if a <= 0 came out
    assert 0 <= card.threshold <= 1
    assert card.operating_points["max_balanced_accuracy"] == card.threshold
    assert {"valid_ece_raw", "valid_ece"} <= card.metrics.keys()
    assert status["calibration"]["threshold"] == card.threshold
    assert load_checkpoint(run / "last.pt").card.calibration == {}  # resume state only


def test_resume_continues_after_the_last_full_epoch(demo_root, tmp_path):
    run = tmp_path / "run"
    fit(quick(demo_root / "idc", epochs=1), run)
    first_epoch = run_folder.read_metrics(run)
    # a torn run: lines of an unfinished epoch 1 that resume must drop and redo
    run_folder.append_metrics(run, [{"epoch": 1, "split": "train", "loss": 9.9, "step": 99}])
    status = fit(quick(demo_root / "idc", epochs=2), run, resume=True)
    assert status["state"] == "finished" and status["epochs_run"] == 2
    metrics = run_folder.read_metrics(run)
    assert 9.9 not in set(metrics["loss"])
    assert list(metrics.loc[metrics.split == "valid", "epoch"]) == [0, 1]
    assert metrics[metrics.epoch == 0].reset_index(drop=True).equals(first_epoch)
    assert load_payload(run / "last.pt")["loop"]["epoch"] == 2


def test_a_train_split_of_one_class_is_refused_before_training(tmp_path):
    import h5py
    from helpers import write_fake_pcam

    fake = write_fake_pcam(tmp_path / "pcam")
    with h5py.File(fake.root / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=np.zeros((8, 1, 1, 1), np.uint8))
    with pytest.raises(ValueError, match="holds only normal patches; a tumour-vs-normal"):
        fit(quick(fake.root), tmp_path / "run")
    assert not (tmp_path / "run" / "best.pt").exists()
    assert run_folder.read_status(tmp_path / "run")["state"] == "failed"


def _weights(path) -> dict[str, torch.Tensor]:
    return load_payload(path)["state_dict"]


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(demo_root, tmp_path):
    """Each epoch draws its shuffle, augmentation and dropout from its own seed, so a run
    cancelled at the first step of epoch 2 and resumed repeats the uninterrupted run exactly
    (bn_cnn, the 50 px default, has dropout)."""
    config, cut = quick(demo_root / "idc", epochs=2), tmp_path / "cut"
    fit(config, tmp_path / "whole")
    model = build_model(load_checkpoint(tmp_path / "whole" / "last.pt").card.arch)[0]
    assert any(isinstance(m, nn.Dropout) for m in model.modules())  # a random draw to keep
    with pytest.raises(TrainingCancelled):
        fit(config, cut, should_stop=lambda: (cut / "last.pt").exists())  # after epoch 1
    assert load_payload(cut / "last.pt")["loop"]["epoch"] == 1
    fit(config, cut, resume=True)
    whole, resumed = (
        _weights(tmp_path / "whole" / "last.pt"),
        _weights(tmp_path / "cut" / "last.pt"),
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_an_epoch_trains_the_same_with_or_without_loader_workers(demo_root, tmp_path):
    """Persistent workers create the loader's iterator once, a worker-less loader once per
    epoch; neither may move the dropout stream (no draw from torch's global RNG)."""
    fit(quick(demo_root / "idc", epochs=2, workers=0), tmp_path / "w0")
    fit(quick(demo_root / "idc", epochs=2, workers=1), tmp_path / "w1")
    w0, w1 = _weights(tmp_path / "w0" / "last.pt"), _weights(tmp_path / "w1" / "last.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_early_stopping_keeps_the_best_epoch(demo_root, tmp_path, monkeypatch):
    import core.train

    scores = iter([0.8, 0.9, 0.85, 0.7, 0.95])  # best at epoch 1, then two worse epochs
    real_evaluate = core.train.evaluate

    def scripted(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "auc": next(scores)}

    monkeypatch.setattr(core.train, "evaluate", scripted)
    run = tmp_path / "r"
    status = fit(quick(demo_root / "idc", epochs=5, patience=2, limit_batches=1), run)
    assert status["stopped_early"] and status["epochs_run"] == 4
    assert status["best"] == {"epoch": 1, "score": 0.9}
    assert load_checkpoint(run / "best.pt").card.metrics["valid_auc"] == 0.9
    assert load_checkpoint(run / "last.pt").card.metrics["valid_auc"] == 0.7


def test_busy_cores_train_on_one_thread_unless_the_user_chose(
    demo_root, tmp_path, monkeypatch, capsys
):
    import core.device
    import core.train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(core.device.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(core.device.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert core.device.busy_cores(torch.device("cpu")) is None  # free cores: torch's threads
    monkeypatch.setattr(core.device.os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    assert core.device.busy_cores(torch.device("meta")) is None  # not a CPU run
    seen, real_evaluate = [], core.train.evaluate

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(core.train, "evaluate", counting)
    before = torch.get_num_threads()
    fit(quick(demo_root / "idc", epochs=1, limit_batches=1), tmp_path / "r")
    assert seen == [1] and "cores are busy (load 6.0)" in capsys.readouterr().out
    assert torch.get_num_threads() == before  # restored for whatever runs next
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert core.device.busy_cores(torch.device("cpu")) is None


def test_class_weighting_plateau_and_the_pretrained_notice(demo_root, tmp_path):
    cfg = quick(
        demo_root / "idc", epochs=2, class_weighting=True, scheduler="plateau", limit_batches=2,
        pretrained=True,  # the seed CNNs have no ImageNet weights: a notice, then from scratch
    )  # fmt: skip
    status = fit(cfg, tmp_path / "r")
    assert status["state"] == "finished" and "no pretrained weights" in status["notice"]


def test_a_failing_run_records_its_error_and_traceback(tmp_path):
    data = write_idc_tree(tmp_path / "idc", patients=2)  # too few patients for a valid split
    run = tmp_path / "run"
    with pytest.raises(DatasetError):
        fit(quick(data), run)
    status = run_folder.read_status(run)
    assert status["state"] == "failed"
    assert "valid split is empty" in status["error"] and "Traceback" in status["traceback"]


def test_should_stop_cancels_cleanly(demo_root, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingCancelled):
        fit(quick(demo_root / "idc"), run, should_stop=lambda: True)
    assert run_folder.read_status(run)["state"] == "cancelled"


INFERENCE_KEYS = {"format", "format_version", "card", "state_dict"}  # what save_checkpoint writes


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_a_run_that_ends_early_leaves_a_calibrated_weights_only_best_pt(
    demo_root, tmp_path, monkeypatch, ending
):
    """Issue 22, item 3: best.pt of a run cancelled (the Training page's SIGTERM sets the same
    flag) or failed after its first epoch held last.pt's optimizer and loop state and no
    calibration. It is weights + card, calibrated on the validation predictions of its epoch."""
    import core.train
    from core.calibration import fit_operating_point
    from core.device import resolve_precision
    from core.train import predictions, validation_indices

    run, cfg = tmp_path / "run", quick(demo_root / "idc", epochs=3)
    if ending == "cancelled":
        with pytest.raises(TrainingCancelled):
            fit(cfg, run, should_stop=lambda: (run / "last.pt").exists())  # after epoch 1
    else:
        real_evaluate, calls = core.train.evaluate, []

        def fails_second(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise OSError("a validation patch became unreadable")
            return real_evaluate(*args, **kwargs)

        monkeypatch.setattr(core.train, "evaluate", fails_second)
        with pytest.raises(OSError):
            fit(cfg, run)
    assert run_folder.read_status(run)["state"] == ending
    assert set(load_payload(run / "best.pt")) == INFERENCE_KEYS
    best = load_checkpoint(run / "best.pt")
    assert best.card.is_calibrated and best.card.calibration["method"] in ("platt", "identity")
    assert best.card.operating_points["max_balanced_accuracy"] == best.card.threshold
    # the map and threshold are the ones epoch 1's validation predictions give
    ds = open_dataset(demo_root / "idc")
    reader = BatchReader(ds, validation_indices(ds, cfg, world=1))
    loader = make_loader(reader, 16, shuffle=False, seed=0, dist_info=Dist(), workers=0,
                         pin_memory=False)  # fmt: skip
    precision = resolve_precision("auto", torch.device("cpu"))  # as training (--like-cuda: bf16)
    rt = Runtime(torch.device("cpu"), best.card, channels_last=True, precision=precision)
    labels, probs, _ = predictions(best.model, loader, nn.CrossEntropyLoss(), rt)
    fitted = fit_operating_point(labels, probs, "platt")  # the guard may keep the identity
    assert best.card.calibration["method"] == fitted.calibration.method
    assert best.card.threshold == pytest.approx(fitted.threshold, abs=1e-6)
    for key in ("a", "b"):
        assert best.card.calibration[key] == pytest.approx(
            fitted.calibration.to_dict()[key], rel=1e-4
        )


def test_a_checkpoint_trained_at_the_app_defaults_fits_the_upload_cap(demo_root, tmp_path):
    """The largest model the Training page picks at its defaults (hcd_cnn, 96 px PCam) leaves a
    best.pt the checkpoint uploader and the server both accept, cancelled or finished."""
    import tomllib

    from core.checkpoints import MAX_UPLOADED_CHECKPOINT_BYTES

    config_toml = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"
    server = tomllib.loads(config_toml.read_text())["server"]
    cap = min(MAX_UPLOADED_CHECKPOINT_BYTES, server["maxUploadSize"] * 2**20)
    run = tmp_path / "run"
    with pytest.raises(TrainingCancelled):
        fit(TrainConfig(data=str(demo_root / "pcam"), limit_batches=1), run,
            should_stop=lambda: (run / "last.pt").exists())  # fmt: skip
    assert load_checkpoint(run / "best.pt").card.arch == "hcd_cnn"
    assert (run / "best.pt").stat().st_size <= cap


def test_one_thread_blocks_that_overlap_across_threads_restore_torchs_thread_count():
    """Two threads' one_thread() blocks closing out of order (a sanity check and a stain sweep in
    one server) leave torch's process-wide thread count as it was, and one thread while any
    block is open (per-block save/restore left every later thread on one thread for good)."""
    import threading

    from core.device import one_thread

    torch.set_num_threads(2)
    a_open, b_open, a_closed = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def a():
        with one_thread():
            a_open.set()
            b_open.wait(10)
        a_closed.set()

    def b():
        a_open.wait(10)
        with one_thread():
            b_open.set()
            a_closed.wait(10)
            seen.append(torch.get_num_threads())  # a has closed, b still open

    threads = [threading.Thread(target=f) for f in (a, b)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen == [1]
        # a thread started later (Streamlit runs each session's script in one) gets the count
        later = []
        reader = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        reader.start()
        reader.join(10)
        assert later == [2]
    finally:
        torch.set_num_threads(2)
