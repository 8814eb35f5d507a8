"""Training as plain functions: ``fit``, ``train_one_epoch`` and ``evaluate``.

``fit(cfg, run_dir)`` trains one model and writes one run directory (layout in
core/run_folder.py): ``config.json``, ``metrics.jsonl``, ``status.json``, ``last.pt`` (every
epoch: weights, model card, optimizer, scheduler and loop state for ``resume``) and ``best.pt``
(weights and card only, rewritten on each improving epoch), both written atomically
(core/checkpoints.py). Every best.pt is calibrated: its card carries a calibration map and
operating points (core.calibration) fitted on the validation predictions of its own epoch, so a
run that is cancelled, fails or is killed leaves a model used exactly as a finished one. After
the last epoch, best.pt is calibrated again on the whole validation split (``--limit-batches``
validates on a subset). Consumers report calibrated P(tumour) and call tumour at the card's
threshold.

Reading order: ``fit`` sets up one ``_Run`` (the set-up, loop state, run folder, torchrun place,
writer and stop flag) and calls ``_Run.train``; the set-up (``_setup``), the writer (rank 0's
hands on the run folder; other ranks get one that does nothing) and the building blocks of an
epoch (``Runtime``, ``train_one_epoch``, ``evaluate``) follow in that order.

The data path keeps the model, not the loader, the bottleneck: a worker reads a whole batch with
one ``read_batch`` call as uint8 N×H×W×3 (core.loaders), the uint8 batch goes to the device, and
augmentation (core.augment), resizing and normalisation (``core.preprocess.to_model_input``, from
the model card) happen there. The config is core.train_config.TrainConfig; device, precision and
torchrun set-up come from core.device.

Randomness is a function of (seed, epoch): the shuffle order and the augmentations of epoch ``e``
are the same whether or not the run was resumed, so a run killed mid-epoch redoes that epoch only.

Under ``torchrun`` (env WORLD_SIZE > 1) the same entry runs DistributedDataParallel with a
DistributedSampler; validation is sharded and gathered; only rank 0 writes the run directory.
Only validation metrics are reported: the test split stays untouched until evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from core import run_folder, run_lock
from core.augment import Augmentation, epoch_generator, epoch_seed
from core.checkpoints import CheckpointError, ModelCard, card_of, load_payload, save_checkpoint
from core.config import CLASS_NAMES
from core.device import (
    Dist,
    autocast_for,
    busy_cores,
    default_workers,
    init_distributed,
    one_thread,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from core.errors import InputError, is_disk_full, one_line
from core.loaders import BatchReader, make_loader, shutdown_workers
from core.models import build_model, get_spec
from core.preprocess import to_model_input
from core.processes import process_start
from core.stain import fit_on_patches
from core.train_config import MIN_INPUT_SIZE, TrainConfig, recommended_model

DROPOUT_STREAM = 2**40  # offsets the global RNG's epoch seed from the augmentation generator's


class TrainingCancelled(Exception):
    """Raised inside the loop when the process is asked to stop (SIGTERM from cancel_run)."""


def fit(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (created if needed); with ``resume``, continue from
    ``run_dir/last.pt``. Returns the final status dict (rank 0) or {} on other ranks.

    Writes status "failed" (with traceback) on errors and "cancelled" when stopped, then
    re-raises, so a caller (the CLI) can choose its exit code."""
    run_dir = Path(run_dir)
    dist_info = init_distributed(cfg.device)
    writer, lock = _NullWriter(), None
    try:
        if dist_info.is_main:
            lock = run_lock.acquire(run_dir)  # RunInUse before anything is written
            writer = _RunWriter(run_dir)
            writer.start(lock.notices)
        setup = _setup(cfg, dist_info)
        try:
            run = _Run(setup, run_dir, dist_info, writer, should_stop, show_progress)
            return run.train(resume)
        finally:
            shutdown_workers(setup.train_loader, setup.valid_loader)
    except (TrainingCancelled, KeyboardInterrupt):
        writer.end("cancelled")
        raise
    except BaseException as exc:
        if should_stop is not None and should_stop():
            # Stopping when something signalled the whole process group (a terminal, torchrun's
            # agent, a scheduler): the loader's workers got the signal too and died first.
            writer.end("cancelled", cancel_detail=one_line(str(exc)))
            raise TrainingCancelled() from exc
        writer.end("failed", error=failure_line(exc, run_dir), traceback=traceback.format_exc())
        raise
    finally:
        if lock:
            lock.release()
        if dist_info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def failure_line(exc: BaseException, run_dir: Path) -> str:
    """The one line a failed run reports; a full disk says so (torch only says 'unexpected
    pos')."""
    if is_disk_full(exc):
        return (
            f"disk full: could not write into {run_dir}; free space, then continue with "
            f"`python -m core train --resume {run_dir}`"
        )
    return one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@dataclass
class _Run:
    """One training run in this process: what set-up built, where it writes (rank 0's writer,
    or one that does nothing), its place under torchrun, how it is asked to stop, and where the
    loop is (``state``, what last.pt carries)."""

    setup: _Setup
    run_dir: Path
    dist_info: Dist
    writer: _RunWriter | _NullWriter
    should_stop: Callable[[], bool] | None = None
    show_progress: bool = False
    state: LoopState = field(init=False)
    augment: Augmentation | None = field(init=False)
    step_stop: Callable[[], bool] | None = field(init=False)  # asked before each training step
    valid_stop: Callable[[], bool] | None = field(init=False)  # ... and each validation batch

    def __post_init__(self) -> None:
        cfg = self.setup.cfg
        self.state = LoopState()
        self.augment = Augmentation() if cfg.augment else None
        self.step_stop = _agreed_stop(
            self.should_stop, self.dist_info, self.setup.rt.device, cfg.log_every
        )
        # single process only: a rank leaving validation alone would strand the others
        self.valid_stop = None if self.dist_info.enabled else self.should_stop

    def train(self, resume: bool) -> dict[str, Any]:
        """Continue from last.pt (with ``resume``), train until the last epoch or early stopping,
        then calibrate best.pt on the whole validation split. Returns the final status."""
        s = self.setup
        busy = busy_cores(s.rt.device)
        if busy:
            self.writer.note(f"note: {busy}")
        with one_thread() if busy else contextlib.nullcontext():
            if resume and (self.run_dir / "last.pt").is_file():
                self.state = self._restore()
            self.writer.begin(s, self.state)
            train_model = _for_training(s.model, s.rt.device, self.dist_info)
            while self.state.epoch < s.cfg.epochs and self.state.bad_epochs < s.cfg.patience:
                self._epoch(train_model)
            return self.writer.finish(s, self.state)

    def _restore(self) -> LoopState:
        """Weights, optimizer, scheduler, scaler and loop counters from ``last.pt``."""
        s, last = self.setup, self.run_dir / "last.pt"
        payload = load_payload(last)
        missing = sorted({"optimizer", "scheduler", "loop"} - payload.keys())
        if missing:
            raise CheckpointError(
                f"{last}: has weights but no {', '.join(missing)} state (not a training run's "
                "last.pt), so the run cannot resume from it; train into a new --out"
            )
        s.model.load_state_dict(payload["state_dict"])
        s.optimizer.load_state_dict(payload["optimizer"])
        s.scheduler.load_state_dict(payload["scheduler"])
        if s.scaler is not None and payload.get("scaler"):
            s.scaler.load_state_dict(payload["scaler"])
        return LoopState(**payload["loop"])

    def _epoch(self, train_model: nn.Module) -> None:
        """Train one epoch, validate, count it, and hand the writer what the epoch left."""
        s = self.setup
        self.writer.phase("train")
        self._train_epoch(train_model)
        self.writer.phase("valid")
        # The unwrapped model: DDP's forward syncs buffers across ranks, which would deadlock
        # when validation shards have different batch counts.
        val = evaluate(
            s.model,
            s.valid_loader,
            s.criterion,
            s.rt,
            dist_info=self.dist_info,
            should_stop=self.valid_stop,
        )
        scored = val.pop("labels"), val.pop("probs")  # what best.pt is calibrated on
        improved = self._advance(val)
        self.writer.end_epoch(s, self.state, val, scored if improved else None)

    def _train_epoch(self, train_model: nn.Module) -> None:
        """One training epoch with a progress bar (terminal) and metrics lines (rank 0)."""
        from tqdm.auto import tqdm

        s, epoch, rank = self.setup, self.state.epoch, self.dist_info.rank
        cfg, steps = s.cfg, s.steps
        s.train_loader.sampler.sampler.set_epoch(epoch)
        # Dropout draws from torch's global RNG: seed it per epoch as well (a stream apart from
        # the augmentation's), so an epoch trains the same after --resume and with or without
        # loader workers (make_loader keeps the loaders' own draws off that RNG).
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank) + DROPOUT_STREAM)
        show = self.show_progress and self.dist_info.is_main
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show)

        def on_log(record):
            done = record.pop("step_in_epoch")
            record.pop("n")
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
            record["images_per_s"] *= self.dist_info.world  # every rank runs at rank 0's pace
            self.writer.log(record, cfg, epoch * steps + done, steps)

        train_one_epoch(
            train_model,
            s.train_loader,
            s.optimizer,
            s.criterion,
            s.rt,
            epoch=epoch,
            generator=epoch_generator(cfg.seed, epoch, rank),
            augment=self.augment,
            scheduler=s.scheduler if cfg.scheduler == "cosine" else None,
            scaler=s.scaler,
            limit=cfg.limit_batches,
            log_every=cfg.log_every,
            on_log=on_log,
            on_step=self.writer.step_done,
            should_stop=self.step_stop,
        )
        bar.close()

    def _advance(self, val: dict[str, Any]) -> bool:
        """Count the finished epoch, step a plateau scheduler, track the best score.
        Returns whether this epoch improved on the best."""
        s, state = self.setup, self.state
        score = validation_score(val)
        if s.cfg.scheduler == "plateau":
            s.scheduler.step(score)
        improved = score > state.best_score
        state.epoch += 1
        state.global_step = state.epoch * s.steps
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch - 1, 0
        else:
            state.bad_epochs += 1
        return improved


def _agreed_stop(should_stop, dist_info: Dist, device: torch.device, every: int):
    """Under torchrun the ranks must stop at the same step: one that leaves alone strands the
    others in a collective. cancel_run signals rank 0 only, so every ``every``-th step (the
    logging cadence; each rank runs the same steps) the ranks all-reduce their stop flags."""
    if should_stop is None or not dist_info.enabled:
        return should_stop
    calls = itertools.count()

    def agreed() -> bool:
        if next(calls) % every:
            return False
        flag = torch.tensor([float(should_stop())], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    return agreed


def _for_training(model: nn.Module, device: torch.device, dist_info: Dist) -> nn.Module:
    """The model the optimizer steps through: wrapped in DDP under torchrun."""
    if not dist_info.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


# -- set-up ---------------------------------------------------------------------------------


@dataclass
class _Setup:
    """What set-up builds once per run (``_setup``): the resolved config, the data, the model
    and everything that trains it."""

    cfg: TrainConfig
    ds: Any
    rt: Runtime
    model: nn.Module
    train_loader: DataLoader
    valid_loader: DataLoader
    steps: int
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    notice: str | None  # e.g. "no ImageNet weights in the local cache: training from scratch"
    startup: dict[str, float]  # unix times set-up stages ended (where launch time goes)


def stain_target(cfg: TrainConfig, ds) -> dict:
    """The card's stain target: fitted on a seeded sample of the training patches (pooled,
    never a validation or test patch); {} without --stain-norm."""
    if cfg.stain_norm == "none":
        return {}
    return fit_on_patches(cfg.stain_norm, ds, ds.indices(split="train"), cfg.seed)


def _setup(cfg: TrainConfig, dist_info: Dist) -> _Setup:
    """Dataset, resolved config, device, model, loaders, loss, optimizer, scheduler."""
    startup = {"imports": time.time()}
    ds = _open_dataset(cfg)
    startup["dataset"] = time.time()
    cfg = resolve_config(cfg, ds)
    device = resolve_device(cfg.device, dist_info.local_rank)
    seed_everything(cfg.seed)  # same initial weights on every rank
    on_cuda = device.type == "cuda"
    # channels_last on the CPU too: its oneDNN convolutions train bn_cnn 1.37-1.54x faster at
    # 50 px on 2 loaded cores (FACTS.md: hcd_cnn 1.4x at 96 px); MPS keeps the default layout.
    channels_last = device.type in ("cuda", "cpu")
    model, notice = build_model(cfg.model, pretrained=cfg.pretrained)
    card = ModelCard.for_model(
        cfg.model,
        input_size=cfg.img_size,
        dataset=cfg.data,
        dataset_format=ds.format,
        split_manifest_id=ds.manifest_id,
        seed=cfg.seed,
        split_seed=cfg.split_seed,
        synthetic_data=ds.synthetic,
        train_config=asdict(cfg),
        stain_norm=stain_target(cfg, ds),  # applied by to_model_input, in training too
    )
    precision = resolve_precision(cfg.precision, device)
    rt = Runtime(device, card, channels_last=channels_last, precision=precision)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    startup["model"] = time.time()

    shuffle_seed = cfg.seed if cfg.shuffle_labels else None  # the data randomisation test
    train_reader = BatchReader(ds, ds.indices(split="train"), shuffle_seed)
    classes = np.unique(train_reader.labels)
    if len(classes) == 1:  # nothing to learn: the "best" model would call everything one class
        raise InputError(
            f"{cfg.data}: the train split holds only {CLASS_NAMES[int(classes[0])]} patches; a "
            "tumour-vs-normal classifier needs both (check the labels, or another --split-seed)."
        )
    valid_reader = BatchReader(ds, validation_indices(ds, cfg, dist_info.world))
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    loader_args = dict(seed=cfg.seed, dist_info=dist_info, workers=workers, pin_memory=on_cuda)
    train_loader = make_loader(train_reader, cfg.batch_size, shuffle=True, **loader_args)
    valid_loader = make_loader(valid_reader, cfg.batch_size, shuffle=False, **loader_args)
    steps = steps_in(train_loader, cfg.limit_batches)

    weight = class_weights(train_reader.labels).to(device) if cfg.class_weighting else None
    # CPU: one fused kernel per parameter, not ~10 small multi-threaded ops each (on busy cores
    # every OpenMP region waits for a time slice: 0.1-0.6 s of AdamW per bn_cnn step measured)
    fused = device.type == "cpu" or None  # None: torch's own choice (foreach on CUDA)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused
    )
    fp16 = precision == "fp16"  # needs loss scaling; bf16 has fp32's range
    return _Setup(
        cfg=cfg,
        ds=ds,
        rt=rt,
        model=model,
        train_loader=train_loader,
        valid_loader=valid_loader,
        steps=steps,
        criterion=nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing),
        optimizer=optimizer,
        scheduler=build_scheduler(cfg, optimizer, steps),
        scaler=torch.amp.GradScaler("cuda") if fp16 else None,
        notice=notice,
        startup={**startup, "loaders": time.time()},
    )


def _open_dataset(cfg: TrainConfig):
    from core.data import DatasetError, open_dataset

    ds = open_dataset(cfg.data, seed=cfg.split_seed)
    for split in ("train", "valid"):
        if len(ds.indices(split=split)) == 0:
            raise DatasetError(
                f"{cfg.data}: the {split} split is empty; add labelled patches or another dataset"
            )
    return ds


def resolve_config(cfg: TrainConfig, ds) -> TrainConfig:
    """Fill the choices left to the data: model from the patch size, img_size = patch size."""
    patch = max(ds.image_size)
    model = cfg.model or recommended_model(patch)
    get_spec(model)  # unknown names fail here, with the list of known ones
    return replace(
        cfg,
        # absolute, links kept: the run names the data as the user does (core.data.dataset_name)
        data=os.path.abspath(Path(cfg.data).expanduser()),
        model=model,
        img_size=cfg.img_size or max(patch, MIN_INPUT_SIZE),
    )


def validation_indices(ds, cfg: TrainConfig, world: int) -> np.ndarray:
    """The validation split; with ``limit_batches``, a fixed seeded random subset of it (the
    same every epoch, both classes in proportion) rather than its first rows."""
    indices = ds.indices(split="valid")
    budget = cfg.limit_batches * cfg.batch_size * world if cfg.limit_batches else len(indices)
    if budget >= len(indices):
        return indices
    return np.sort(np.random.default_rng(cfg.seed).choice(indices, budget, replace=False))


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """n / (2 · count_c): each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.tensor(len(labels) / (2 * np.maximum(counts, 1)), dtype=torch.float32)


def build_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """Cosine: per step over all epochs, after ``warmup_epochs`` of linear warm-up from lr/10
    (a large batch with a linearly scaled lr diverges without it). Plateau: on validation."""
    if cfg.scheduler == "cosine":
        lrs = torch.optim.lr_scheduler
        warmup = cfg.warmup_epochs * steps_per_epoch
        cosine = lrs.CosineAnnealingLR(
            optimizer, T_max=max(cfg.epochs * steps_per_epoch - warmup, 1)
        )
        if not warmup:
            return cosine
        ramp = lrs.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
        return lrs.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)


@dataclass
class LoopState:
    """What ``last.pt`` carries besides the weights, to continue after the last full epoch."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0


def validation_score(metrics: dict[str, Any]) -> float:
    """Early stopping watches validation AUC; with one class in validation AUC is undefined
    and minus the validation loss is watched instead."""
    return metrics["auc"] if metrics["auc"] is not None else -metrics["loss"]


# -- the run folder: rank 0 writes it, other ranks write nothing --------------------------


class _RunWriter:
    """Rank 0's hands on the run directory (status, metrics lines, progress and ETA, the
    checkpoints) and its voice on stdout."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.t0 = time.perf_counter()
        self.first_step = 0  # global step this process started from (after a resume)
        self.stepped = False  # first_step_at written
        self.startup: dict[str, float] = {}
        self.images_per_s: float | None = None  # last training pace, kept through validation

    def start(self, notices: list[str]) -> None:
        for notice in notices:  # a stale lock taken over, leftover temp files removed
            self.note(f"note: {notice}")
        status = run_folder.read_json(self.run_dir / run_folder.STATUS_FILE)
        run_folder.write_status(
            self.run_dir,
            state="running",
            pid=os.getpid(),
            pid_start=process_start(os.getpid()),
            host=socket.gethostname(),
            created=status.get("created", run_folder.now_iso()),
            started=run_folder.now_iso(),
            ended=None,
            error=None,
            traceback=None,
        )

    def note(self, text: str) -> None:
        print(text, flush=True)

    def begin(self, s: _Setup, state: LoopState) -> None:
        """The resolved config, device and precision, the set-up notice, and metrics of
        finished epochs only."""
        if s.notice:
            self.note(s.notice)
        run_folder.write_status(
            self.run_dir,
            notice=s.notice,
            device=str(s.rt.device),
            precision=s.rt.precision,
            excluded_patches=len(s.ds.excluded),
        )
        run_folder.write_config(self.run_dir, asdict(s.cfg))
        run_folder.keep_metrics(self.run_dir, before_epoch=state.epoch)
        self.first_step = state.global_step
        self.startup = s.startup

    def phase(self, name: str) -> None:
        """What the run does now, "train" or "valid" (an event tests and pages can wait on)."""
        run_folder.write_status(self.run_dir, phase=name)

    def step_done(self, step: int) -> None:
        """Once per process: when the first optimizer step has run on the device (launch to
        first step = ``first_step_at`` - the process start)."""
        if self.stepped:
            return
        self.stepped = True
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # once per run: the time the step ran, not was queued
        run_folder.write_status(self.run_dir, first_step_at=time.time(), startup=self.startup)

    def log(self, record: dict[str, Any], cfg: TrainConfig, global_step: int, steps: int) -> None:
        """Append one metrics line and refresh progress (ETA from this process's pace)."""
        run_folder.append_metrics(
            self.run_dir, [{**record, "step": global_step, "time": time.time()}]
        )
        total = cfg.epochs * steps
        self.images_per_s = record.get("images_per_s", self.images_per_s)
        pace = (time.perf_counter() - self.t0) / max(global_step - self.first_step, 1)
        run_folder.write_status(
            self.run_dir,
            progress={
                "epoch": record["epoch"] + 1,
                "epochs": cfg.epochs,
                "step": global_step - record["epoch"] * steps,
                "steps_per_epoch": steps,
                "fraction": min(global_step / max(total, 1), 1.0),
                "images_per_s": self.images_per_s,
                "eta_s": round(pace * max(total - global_step, 0), 1),
            },
        )

    def end_epoch(
        self,
        s: _Setup,
        state: LoopState,
        val: dict[str, Any],
        best_predictions: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        """The validation line and the best epoch so far, then the checkpoints: best.pt when the
        epoch improved (``best_predictions``: its validation labels and P(tumour), which best.pt
        is calibrated on), then last.pt. In that order because last.pt claims the epoch done: a
        kill between two writes leaves the epoch unclaimed (redone on --resume), never its
        validation line unrecorded or its best.pt unwritten."""
        record = {"epoch": state.epoch - 1, "split": "valid", **val}
        record["lr"] = s.optimizer.param_groups[0]["lr"]
        self.log(record, s.cfg, state.global_step, s.steps)
        run_folder.write_status(
            self.run_dir, best={"epoch": state.best_epoch, "score": state.best_score}
        )
        card = replace(s.rt.card, metrics={f"valid_{k}": v for k, v in val.items()})
        if best_predictions is not None:
            _save_best(self.run_dir / "best.pt", s.model, card, *best_predictions, s.cfg)
        save_checkpoint(
            self.run_dir / "last.pt",
            s.model,
            card,
            optimizer=s.optimizer.state_dict(),
            scheduler=s.scheduler.state_dict(),
            scaler=s.scaler.state_dict() if s.scaler is not None else {},
            loop=asdict(state),
        )

    def finish(self, s: _Setup, state: LoopState) -> dict[str, Any]:
        """Calibrate best.pt on the whole validation split, then the final status."""
        calibration = _calibrate_best(s, self.run_dir / "best.pt")
        progress = run_folder.read_json(self.run_dir / run_folder.STATUS_FILE).get("progress", {})
        return self.end(
            "finished",
            calibration=calibration,
            epochs_run=state.epoch,
            stopped_early=state.epoch < s.cfg.epochs,
            progress={**progress, "fraction": 1.0, "eta_s": 0},
        )

    def end(self, state: str, **fields: Any) -> dict[str, Any]:
        return run_folder.write_status(
            self.run_dir, state=state, ended=run_folder.now_iso(), **fields
        )


class _NullWriter:
    """The writer of ranks other than 0: rank 0 alone writes the run directory and speaks."""

    def note(self, text: str) -> None:
        pass

    def begin(self, s: _Setup, state: LoopState) -> None:
        pass

    def phase(self, name: str) -> None:
        pass

    def step_done(self, step: int) -> None:
        pass

    def log(self, record: dict[str, Any], cfg: TrainConfig, global_step: int, steps: int) -> None:
        pass

    def end_epoch(self, s: _Setup, state: LoopState, val: dict[str, Any], best_predictions) -> None:
        pass

    def finish(self, s: _Setup, state: LoopState) -> dict[str, Any]:
        return {}

    def end(self, state: str, **fields: Any) -> dict[str, Any]:
        return {}


def _calibrate_best(s: _Setup, best_path: Path) -> dict[str, Any]:
    """Calibrate best.pt again with its own weights on the whole validation split (rank 0, one
    process; training may validate on a subset). Returns what the run's status reports."""
    payload = load_payload(best_path)
    model = copy.deepcopy(s.model)
    model.load_state_dict(payload["state_dict"])  # fp16 weights are cast into the fp32 model
    loader = make_loader(
        s.valid_loader.dataset,
        s.cfg.batch_size,
        shuffle=False,
        seed=s.cfg.seed,
        dist_info=Dist(),
        workers=0,
        pin_memory=False,
    )
    labels, probs, _ = predictions(model, loader, s.criterion, s.rt)
    return _save_best(best_path, model, card_of(payload, best_path), labels, probs, s.cfg)


def _save_best(
    path: Path, model: nn.Module, card: ModelCard, labels, probs, cfg: TrainConfig
) -> dict[str, Any]:
    """Write best.pt: weights only (float16 with ``best_fp16``) and ``card`` with the calibration
    map and operating points fitted on validation ``labels`` and raw ``probs`` (core.calibration).
    Returns what the run's status reports: method, threshold, validation ECE before/after."""
    from core.calibration import fit_operating_point

    fitted = fit_operating_point(labels, probs, cfg.calibration)
    card = fitted.apply_to(card)
    # .half() converts floating-point tensors only (BatchNorm counters stay int64).
    save_checkpoint(path, copy.deepcopy(model).half() if cfg.best_fp16 else model, card)
    return {
        "method": fitted.calibration.method,
        "threshold": fitted.threshold,
        "valid_ece_raw": fitted.ece_raw,
        "valid_ece": fitted.ece,
    }


# -- one epoch: plain functions -------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """What the loop needs besides the model: device, card (preprocessing) and precision."""

    device: torch.device
    card: ModelCard
    channels_last: bool = False
    precision: str = "fp32"  # as resolved by core.device.resolve_precision

    def autocast(self):
        return autocast_for(self.device, self.precision)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.card, self.device, channels_last=self.channels_last)

    def prepare(
        self,
        images: torch.Tensor,
        augment: Augmentation | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """uint8 batch on the device -> (augmented) normalised model input.

        On CPU these are small element-wise ops: with every core busy, a multi-threaded
        OpenMP region waits for a time slice per op (measured 270-540 ms vs 15-33 ms single-
        threaded per 64×50×50 batch on 2 loaded cores), so they run on one thread there.
        """
        with one_thread() if self.device.type == "cpu" else contextlib.nullcontext():
            if augment is not None:
                images = augment(images, generator)
            return self.inputs(images)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    rt: Runtime,
    *,
    epoch: int,
    generator: torch.Generator,
    augment: Augmentation | None = None,
    scheduler=None,
    scaler: torch.amp.GradScaler | None = None,
    limit: int | None = None,
    log_every: int = 10,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One pass over ``loader``. ``scheduler`` (if given) steps every batch. ``on_log`` gets a
    record every ``log_every`` steps and at the end: loss/accuracy/AUC over that window;
    ``on_step(step)`` is called after every optimizer step; ``should_stop()`` before each.

    The host never waits for the device inside a step (batches come pinned and move with
    ``non_blocking``, augmentation draws on the host and gathers on the device), so it runs
    ahead reading and queueing the next batch; the one synchronisation is the window flush
    every ``log_every`` steps."""
    model.train()
    total = steps_in(loader, limit)
    window = _Window()
    epoch_loss, epoch_correct, epoch_n = 0.0, 0, 0
    for step, (images, labels) in enumerate(_batches(loader, limit), start=1):
        if should_stop is not None and should_stop():
            raise TrainingCancelled()
        images = images.to(rt.device, non_blocking=True)
        labels = labels.to(rt.device, non_blocking=True)
        inputs = rt.prepare(images, augment, generator)
        with rt.autocast():
            logits = model(inputs)
            loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if on_step is not None:
            on_step(step)
        window.add(loss, logits, labels)
        if step % log_every == 0 or step == total:
            record = window.flush()  # the only host-device sync, once per window
            epoch_loss += record["loss"] * record["n"]
            epoch_correct += round(record["accuracy"] * record["n"])
            epoch_n += record["n"]
            if on_log is not None:
                lr = optimizer.param_groups[0]["lr"]
                on_log(
                    {"epoch": epoch, "step_in_epoch": step, "split": "train", **record, "lr": lr}
                )
    return {
        "loss": epoch_loss / max(epoch_n, 1),
        "accuracy": epoch_correct / max(epoch_n, 1),
        "n": epoch_n,
    }


def _batches(loader: DataLoader, limit: int | None) -> Iterator:
    return islice(loader, limit) if limit else iter(loader)


def steps_in(loader: DataLoader, limit: int | None) -> int:
    return min(len(loader), limit) if limit else len(loader)


class _Window:
    """Training batches since the last log line, kept on the device until ``flush``."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses, self.probs, self.labels = [], [], []
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.losses.append(loss.detach() * len(labels))
        self.probs.append(torch.softmax(logits.detach().float(), dim=1)[:, 1])
        self.labels.append(labels)

    def flush(self) -> dict[str, Any]:
        y = torch.cat(self.labels).cpu().numpy()
        p = torch.cat(self.probs).cpu().numpy()
        loss = float(torch.stack(self.losses).sum()) / len(y)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.reset()
        return {
            "loss": loss,
            "accuracy": float(((p >= 0.5) == y).mean()),
            "auc": _auc(y, p),
            "images_per_s": len(y) / elapsed,
            "n": len(y),
        }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    rt: Runtime,
    *,
    dist_info: Dist = Dist(),
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Loss, accuracy and ROC AUC (scikit-learn) over ``loader``, and the ``labels`` and raw
    P(tumour) ``probs`` (numpy) they were computed from (fit pops them to calibrate best.pt);
    shards are gathered across ranks so every rank returns the same. ``should_stop()`` is asked
    before each batch (single process only: a rank leaving validation alone would strand the
    others)."""
    y, p, loss_sum = predictions(
        model, loader, criterion, rt, dist_info=dist_info, should_stop=should_stop
    )
    n = len(y)
    return {
        "loss": loss_sum / n if n else float("nan"),
        "accuracy": float(((p >= 0.5) == y).mean()) if n else float("nan"),
        "auc": _auc(y, p),
        "n": n,
        "labels": y,
        "probs": p,
    }


@torch.inference_mode()
def predictions(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    rt: Runtime,
    *,
    dist_info: Dist = Dist(),
    should_stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, softmax P(tumour), summed loss) over ``loader``, gathered across ranks.
    Results stay on the device until the end: one synchronisation, not one per batch."""
    model.eval()
    labels_all, probs_all, losses = [], [], []
    for images, labels in loader:
        if should_stop is not None and should_stop():
            raise TrainingCancelled()
        inputs = rt.prepare(images.to(rt.device, non_blocking=True))
        labels = labels.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(inputs)
        losses.append(criterion(logits.float(), labels) * len(labels))
        probs_all.append(torch.softmax(logits.float(), dim=1)[:, 1])
        labels_all.append(labels)
    y = torch.cat(labels_all).cpu().numpy() if labels_all else np.zeros(0, dtype=np.int64)
    p = torch.cat(probs_all).float().cpu().numpy() if probs_all else np.zeros(0, np.float32)
    loss_sum = float(torch.stack(losses).sum()) if losses else 0.0
    if dist_info.enabled:
        gathered: list = [None] * dist_info.world
        dist.all_gather_object(gathered, (y, p, loss_sum))
        y = np.concatenate([g[0] for g in gathered])
        p = np.concatenate([g[1] for g in gathered])
        loss_sum = sum(g[2] for g in gathered)
    return y, p, loss_sum


def _auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC from scikit-learn; None when only one class is present."""
    from sklearn.metrics import roc_auc_score  # here: ~1 s of import off the way to step one

    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, probs))
