"""Training as plain functions: ``train_one_epoch``, ``evaluate`` and ``fit``.

``fit(cfg, run_dir)`` trains one model and writes one run directory (layout in core/jobs.py):
``config.json``, ``metrics.jsonl``, ``status.json``, ``last.pt`` (every epoch, with optimizer,
scheduler and loop state for ``resume``) and ``best.pt`` (best validation score). Both .pt files
are full checkpoints with a model card (core/checkpoints.py), written atomically.

The data path keeps the model, not the loader, the bottleneck: a worker reads a whole batch with
one ``read_batch`` call as uint8 N×H×W×3, the uint8 batch goes to the device, and augmentation,
resizing and normalisation (``core.preprocess.to_model_input``, from the model card) happen there.

Randomness is a function of (seed, epoch): the shuffle order and the augmentations of epoch ``e``
are the same whether or not the run was resumed, so a run killed mid-epoch redoes that epoch only.

Under ``torchrun`` (env WORLD_SIZE > 1) the same entry runs DistributedDataParallel with a
DistributedSampler; validation is sharded and gathered; only rank 0 writes the run directory.
Only validation metrics are reported: the test split stays untouched until evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from core import jobs
from core.checkpoints import ModelCard, load_payload, save_checkpoint
from core.d4 import D4_GROUP
from core.models import MIN_INPUT_SIZE, build_model, get_spec, recommended_model
from core.preprocess import autocast_for, to_model_input

SCHEDULERS = ("cosine", "plateau")
DEVICES = ("auto", "cpu", "cuda", "mps")


class TrainingCancelled(Exception):
    """Raised inside the loop when the process is asked to stop (SIGTERM from cancel_run)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``None`` means "decided from the data" and is resolved by ``fit``."""

    data: str
    model: str | None = None  # None: recommended_model(patch size)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    img_size: int | None = None  # None: the dataset's patch size (no resampling)
    device: str = "auto"  # auto = cuda > mps > cpu
    seed: int = 0
    pretrained: bool = False
    augment: bool = True  # D4 + light stain/brightness jitter
    class_weighting: bool = False  # loss weights inversely proportional to class counts
    scheduler: str = "cosine"  # cosine (per step) | plateau (on validation score)
    patience: int = 3  # early stopping: epochs without a better validation score
    limit_batches: int | None = None  # cap batches per epoch (train; valid: random subset)
    workers: int | None = None  # DataLoader workers; None: 0 on CPU, up to 4 on CUDA
    amp: bool = True  # bf16/fp16 autocast on CUDA (ignored elsewhere)
    log_every: int = 10  # optimizer steps between metrics lines
    best_fp16: bool = False  # store best.pt weights as float16 (half the file; load as float32)

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0"
            for name in ("epochs", "batch_size", "lr", "log_every")
            if getattr(self, name) <= 0
        ]
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler must be one of {SCHEDULERS}")
        if self.device.split(":")[0] not in DEVICES:
            problems.append(f"device must be one of {DEVICES}")
        if self.img_size is not None and self.img_size < MIN_INPUT_SIZE:
            problems.append(f"img_size must be >= {MIN_INPUT_SIZE}")
        if problems:
            raise ValueError("Invalid training config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# -- environment ----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) before any random draw."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """cuda > mps > cpu for "auto"; an explicit device that is not available is an error."""
    kind = requested.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple MPS is not available; use --device cpu or auto")
    if kind == "cuda":
        index = int(requested.split(":")[1]) if ":" in requested else local_rank
        return torch.device("cuda", index)
    return torch.device(kind)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> Dist:
    """Join the torchrun process group (nccl on CUDA, gloo otherwise) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_request.split(":")[0] in ("auto", "cuda")
        if use_nccl:
            torch.cuda.set_device(local_rank)  # before NCCL init: one GPU per process
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


# -- data -----------------------------------------------------------------------------------


class BatchReader(Dataset):
    """Positions in ``indices`` -> one (uint8 N×H×W×3, int64 labels) batch per item.

    Used with a BatchSampler as the DataLoader's sampler and ``batch_size=None``, so each worker
    reads a whole batch with one ``read_batch`` call. The PatchDataset pickles without file
    handles and opens them lazily, so every worker reopens its own h5 file.
    """

    def __init__(self, ds, indices: np.ndarray):
        self.ds = ds
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = ds.meta["label"].to_numpy(dtype=np.int64)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        positions = np.asarray(positions, dtype=np.int64)
        images = self.ds.read_batch(self.indices[positions])
        return torch.from_numpy(images), torch.from_numpy(self.labels[positions])


def make_loader(
    reader: BatchReader,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    dist_info: Dist,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Training loaders shuffle with DistributedSampler (also for one process: it gives a
    seeded order per epoch via set_epoch) and drop a ragged last batch; validation loaders
    take a contiguous shard per rank without padding, so every patch counts exactly once."""
    if shuffle:
        sampler = DistributedSampler(
            reader, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=seed
        )
        drop_last = len(sampler) > batch_size
    else:
        sampler = range(dist_info.rank, len(reader), dist_info.world)
        drop_last = False
    return DataLoader(
        reader,
        sampler=BatchSampler(sampler, batch_size, drop_last=drop_last),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


# -- augmentation (on the device, on uint8 batches) ----------------------------------------

# Ruifrok & Johnston H&E-DAB stain vectors, as in skimage.color.rgb2hed.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)


@dataclass(frozen=True)
class Augmentation:
    """Random D4 transform per patch, then light HED stain jitter (Tellez et al. 2018) and
    brightness jitter. Output is uint8 again, so the model input goes through exactly the
    card's preprocessing, as at inference."""

    stain_scale: float = 0.05  # alpha ~ U(1 - s, 1 + s) per stain channel
    stain_shift: float = 0.005  # beta ~ U(-s, s), in skimage's HED units (~2-7 grey levels)
    brightness: float = 0.05  # factor ~ U(1 - b, 1 + b)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, h, w, _ = images.shape
        x = images.permute(0, 3, 1, 2)  # NCHW view: D4 acts on the last two axes
        n_ops = len(D4_GROUP) if h == w else 2  # quarter turns need square patches
        ops = torch.randint(0, n_ops, (n,), generator=generator).to(x.device)
        out = torch.empty_like(x)
        for j in range(n_ops):  # one batched op per transform, not one per patch
            chosen = ops == j
            out[chosen] = D4_GROUP[j].apply(x[chosen])
        x = out
        log_rgb = (
            x.permute(0, 2, 3, 1).reshape(n, h * w, 3).float().div_(255.0).clamp_(min=1e-6).log_()
        )
        matrix, offset = self.colour_transform(n, generator)
        # One batched affine map in log space = HED jitter + brightness (see colour_transform).
        log_rgb = torch.baddbmm(offset.to(x.device), log_rgb, matrix.to(x.device))
        rgb = log_rgb.exp_().mul_(255.0).round_().clamp_(0, 255)
        return rgb.to(torch.uint8).view(n, h, w, 3)

    def colour_transform(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch (3×3 matrix, 1×3 offset) acting on log RGB.

        skimage's HED: stains = log(rgb) / L @ H (L = log 1e-6, H = hed_from_rgb), and back
        rgb = exp(stains · L @ R) (R = rgb_from_hed). Jittering stains -> stains · α + β and
        scaling brightness by f is therefore log(rgb) @ (H diag(α) R) + (L β R + log f).
        """
        u = torch.rand(n, 7, generator=generator)
        alpha = 1 + self.stain_scale * (2 * u[:, 0:3] - 1)
        beta = self.stain_shift * (2 * u[:, 3:6] - 1)
        factor = 1 + self.brightness * (2 * u[:, 6] - 1)
        matrix = _HED_FROM_RGB @ torch.diag_embed(alpha) @ _RGB_FROM_HED
        offset = (_LOG_ADJUST * beta) @ _RGB_FROM_HED + torch.log(factor)[:, None]
        return matrix, offset[:, None, :]


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)


# -- one epoch ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """What the loop needs besides the model: device, card (preprocessing) and precision."""

    device: torch.device
    card: ModelCard
    channels_last: bool = False
    amp: bool = False

    def autocast(self):
        return autocast_for(self.device) if self.amp else contextlib.nullcontext()

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
        with _one_thread_on_cpu(self.device):
            if augment is not None:
                images = augment(images, generator)
            return self.inputs(images)


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device):
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC from scikit-learn; None when only one class is present."""
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, probs))


def _batches(loader: DataLoader, limit: int | None) -> Iterator:
    return islice(loader, limit) if limit else iter(loader)


def steps_in(loader: DataLoader, limit: int | None) -> int:
    return min(len(loader), limit) if limit else len(loader)


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
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One pass over ``loader``. ``scheduler`` (if given) steps every batch. ``on_log`` gets a
    record every ``log_every`` steps and at the end: loss/accuracy/AUC over that window."""
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
) -> dict[str, Any]:
    """Loss, accuracy and ROC AUC (scikit-learn) over ``loader``; shards are gathered across
    ranks so every rank returns the same numbers."""
    model.eval()
    labels_all, probs_all, loss_sum = [], [], 0.0
    for images, labels in loader:
        inputs = rt.prepare(images.to(rt.device, non_blocking=True))
        with rt.autocast():
            logits = model(inputs)
        labels = labels.to(rt.device)
        loss_sum += float(criterion(logits.float(), labels)) * len(labels)
        probs_all.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
        labels_all.append(labels.cpu().numpy())
    y = np.concatenate(labels_all) if labels_all else np.zeros(0, dtype=np.int64)
    p = np.concatenate(probs_all) if probs_all else np.zeros(0, dtype=np.float32)
    if dist_info.enabled:
        gathered: list = [None] * dist_info.world
        dist.all_gather_object(gathered, (y, p, loss_sum))
        y = np.concatenate([g[0] for g in gathered])
        p = np.concatenate([g[1] for g in gathered])
        loss_sum = sum(g[2] for g in gathered)
    n = len(y)
    return {
        "loss": loss_sum / n if n else float("nan"),
        "accuracy": float(((p >= 0.5) == y).mean()) if n else float("nan"),
        "auc": _auc(y, p),
        "n": n,
    }


# -- fit ------------------------------------------------------------------------------------


def resolve_config(cfg: TrainConfig, ds) -> TrainConfig:
    """Fill the choices left to the data: model from the patch size, img_size = patch size."""
    patch = max(ds.image_size)
    model = cfg.model or recommended_model(patch)
    get_spec(model)  # unknown names fail here, with the list of known ones
    return replace(
        cfg,
        data=str(Path(cfg.data).expanduser().resolve()),
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
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(cfg.epochs * steps_per_epoch, 1)
        )
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


def _open_dataset(cfg: TrainConfig):
    from core.data import DatasetError, open_dataset

    ds = open_dataset(cfg.data, seed=cfg.seed)
    for split in ("train", "valid"):
        if len(ds.indices(split=split)) == 0:
            raise DatasetError(
                f"{cfg.data}: the {split} split is empty; add labelled patches or another dataset"
            )
    return ds


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
    writer = _RunWriter(run_dir) if dist_info.is_main else None
    try:
        if writer:
            writer.start()
        return _fit(cfg, run_dir, dist_info, writer, resume, should_stop, show_progress)
    except (TrainingCancelled, KeyboardInterrupt):
        if writer:
            writer.end("cancelled")
        raise
    except BaseException as exc:
        if writer:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            writer.end("failed", error=message, traceback=traceback.format_exc())
        raise
    finally:
        if dist_info.enabled and dist.is_initialized():
            dist.destroy_process_group()


class _RunWriter:
    """Rank 0's view of the run directory: status, metrics lines, progress and ETA."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.t0 = time.perf_counter()
        self.first_step = 0  # global step this process started from (after a resume)
        self.images_per_s: float | None = None  # last training pace, kept through validation

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        status = jobs.read_json(self.run_dir / jobs.STATUS_FILE)
        jobs.write_status(
            self.run_dir,
            state="running",
            pid=os.getpid(),
            pid_start=jobs.process_start(os.getpid()),
            host=socket.gethostname(),
            created=status.get("created", jobs.now_iso()),
            started=jobs.now_iso(),
            ended=None,
            error=None,
            traceback=None,
        )

    def end(self, state: str, **fields: Any) -> dict[str, Any]:
        return jobs.write_status(self.run_dir, state=state, ended=jobs.now_iso(), **fields)

    def log(self, record: dict[str, Any], cfg: TrainConfig, global_step: int, steps: int) -> None:
        """Append one metrics line and refresh progress (ETA from this process's pace)."""
        jobs.append_metrics(self.run_dir, [{**record, "step": global_step, "time": time.time()}])
        total = cfg.epochs * steps
        self.images_per_s = record.get("images_per_s", self.images_per_s)
        pace = (time.perf_counter() - self.t0) / max(global_step - self.first_step, 1)
        jobs.write_status(
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


@dataclass
class _Setup:
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


def _setup(cfg: TrainConfig, dist_info: Dist) -> _Setup:
    """Dataset, resolved config, device, model, loaders, loss, optimizer, scheduler."""
    ds = _open_dataset(cfg)
    cfg = resolve_config(cfg, ds)
    device = resolve_device(cfg.device, dist_info.local_rank)
    seed_everything(cfg.seed)  # same initial weights on every rank
    on_cuda = device.type == "cuda"
    model, notice = build_model(cfg.model, pretrained=cfg.pretrained)
    card = ModelCard.for_model(
        cfg.model,
        input_size=cfg.img_size,
        dataset=cfg.data,
        dataset_format=ds.format,
        split_manifest_id=ds.manifest_id,
        seed=cfg.seed,
        synthetic_data=ds.synthetic,
        train_config=asdict(cfg),
    )
    rt = Runtime(device, card, channels_last=on_cuda, amp=on_cuda and cfg.amp)
    model.to(device, memory_format=torch.channels_last if on_cuda else torch.preserve_format)

    train_reader = BatchReader(ds, ds.indices(split="train"))
    valid_reader = BatchReader(ds, validation_indices(ds, cfg, dist_info.world))
    default_workers = min(4, os.cpu_count() or 1) if on_cuda else 0  # CPU: cores do the math
    workers = cfg.workers if cfg.workers is not None else default_workers
    loader_args = dict(seed=cfg.seed, dist_info=dist_info, workers=workers, pin_memory=on_cuda)
    train_loader = make_loader(train_reader, cfg.batch_size, shuffle=True, **loader_args)
    valid_loader = make_loader(valid_reader, cfg.batch_size, shuffle=False, **loader_args)
    steps = steps_in(train_loader, cfg.limit_batches)

    weight = class_weights(train_reader.labels).to(device) if cfg.class_weighting else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fp16 = rt.amp and rt.autocast().fast_dtype == torch.float16
    return _Setup(
        cfg=cfg,
        ds=ds,
        rt=rt,
        model=model,
        train_loader=train_loader,
        valid_loader=valid_loader,
        steps=steps,
        criterion=nn.CrossEntropyLoss(weight=weight),
        optimizer=optimizer,
        scheduler=build_scheduler(cfg, optimizer, steps),
        scaler=torch.amp.GradScaler("cuda") if fp16 else None,
        notice=notice,
    )


def _restore(s: _Setup, last_path: Path) -> LoopState:
    """Weights, optimizer, scheduler, scaler and loop counters from ``last.pt``."""
    payload = load_payload(last_path)
    s.model.load_state_dict(payload["state_dict"])
    s.optimizer.load_state_dict(payload["optimizer"])
    s.scheduler.load_state_dict(payload["scheduler"])
    if s.scaler is not None and payload.get("scaler"):
        s.scaler.load_state_dict(payload["scaler"])
    return LoopState(**payload["loop"])


def _save_epoch(s: _Setup, run_dir: Path, state: LoopState, val: dict, improved: bool) -> None:
    card = replace(s.rt.card, metrics={f"valid_{k}": v for k, v in val.items()})
    if improved:
        # .half() converts floating-point tensors only (BatchNorm counters stay int64).
        best = copy.deepcopy(s.model).half() if s.cfg.best_fp16 else s.model
        save_checkpoint(run_dir / "best.pt", best, card)
    save_checkpoint(
        run_dir / "last.pt",
        s.model,
        card,
        optimizer=s.optimizer.state_dict(),
        scheduler=s.scheduler.state_dict(),
        scaler=s.scaler.state_dict() if s.scaler is not None else {},
        loop=asdict(state),
    )


def _fit(cfg, run_dir, dist_info, writer, resume, should_stop, show_progress):
    from tqdm.auto import tqdm

    s = _setup(cfg, dist_info)
    cfg, steps = s.cfg, s.steps
    state = LoopState()
    if resume and (run_dir / "last.pt").is_file():
        state = _restore(s, run_dir / "last.pt")
    if writer:
        if s.notice:
            print(s.notice, flush=True)
            jobs.write_status(run_dir, notice=s.notice)
        jobs.write_config(run_dir, asdict(cfg))
        jobs.keep_metrics(run_dir, before_epoch=state.epoch)
        writer.first_step = state.global_step

    train_model = s.model
    if dist_info.enabled:
        device_ids = [s.rt.device.index] if s.rt.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(s.model, device_ids=device_ids)
    augment = Augmentation() if cfg.augment else None
    show = show_progress and writer is not None
    while state.epoch < cfg.epochs and state.bad_epochs < cfg.patience:
        epoch = state.epoch
        s.train_loader.sampler.sampler.set_epoch(epoch)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show)

        def on_log(record, epoch=epoch, bar=bar):
            done = record.pop("step_in_epoch")
            record.pop("n")
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
            record["images_per_s"] *= dist_info.world  # every rank runs at rank 0's pace
            if writer:
                writer.log(record, cfg, epoch * steps + done, steps)

        train_one_epoch(
            train_model,
            s.train_loader,
            s.optimizer,
            s.criterion,
            s.rt,
            epoch=epoch,
            generator=epoch_generator(cfg.seed, epoch, dist_info.rank),
            augment=augment,
            scheduler=s.scheduler if cfg.scheduler == "cosine" else None,
            scaler=s.scaler,
            limit=cfg.limit_batches,
            log_every=cfg.log_every,
            on_log=on_log,
            should_stop=should_stop,
        )
        bar.close()
        # The unwrapped model: DDP's forward syncs buffers across ranks, which would deadlock
        # when validation shards have different batch counts.
        val = evaluate(s.model, s.valid_loader, s.criterion, s.rt, dist_info=dist_info)
        score = validation_score(val)
        if cfg.scheduler == "plateau":
            s.scheduler.step(score)
        improved = score > state.best_score
        state.epoch, state.global_step = epoch + 1, (epoch + 1) * steps
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
        if writer:
            _save_epoch(s, run_dir, state, val, improved)
            lr = s.optimizer.param_groups[0]["lr"]
            writer.log(
                {"epoch": epoch, "split": "valid", **val, "lr": lr}, cfg, state.global_step, steps
            )
            jobs.write_status(run_dir, best={"epoch": state.best_epoch, "score": state.best_score})
    if writer is None:
        return {}
    done = {
        **jobs.read_json(run_dir / jobs.STATUS_FILE).get("progress", {}),
        "fraction": 1.0,
        "eta_s": 0,
    }
    return writer.end(
        "finished", epochs_run=state.epoch, stopped_early=state.epoch < cfg.epochs, progress=done
    )
