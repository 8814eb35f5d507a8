"""The training config: one typed, frozen dataclass, its choices and defaults.

Torch-free, so the Training page, the CLI (core/commands/train.py) and core.jobs share it
without importing the training loop. ``asdict(cfg)`` is what a run writes to ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from core.calibration import METHODS as CALIBRATIONS
from core.data.registry import MAX_SEED
from core.errors import InputError
from core.stain import STAIN_METHODS

SCHEDULERS = ("cosine", "plateau")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on CUDA, fp32 elsewhere (core.device)
MIN_INPUT_SIZE = 32  # the smallest input side every registered model accepts
STAIN_NORMS = ("none", *STAIN_METHODS)  # core.stain; the fitted target goes into the model card


def precision_without_cuda(requested: str) -> str:
    """The precision ``requested`` computes in off CUDA ("auto" is fp32 there; fp32 and bf16
    as asked, on any device). ``core.device.resolve_precision`` adds what "auto" is on CUDA."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {requested!r}")
    return "fp32" if requested == "auto" else requested


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``None`` means "decided from the data" and is resolved by ``fit``."""

    data: str
    model: str | None = None  # None: recommended_model(patch size)
    epochs: int = 20  # the default recipe (README "Measured figures"): chosen on validation
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    img_size: int | None = None  # None: the dataset's patch size (no resampling)
    device: str = "auto"  # auto = cuda > mps > cpu
    seed: int = 0  # weights, batch order, augmentation
    split_seed: int = 0  # the patient (IDC) / patch (HCD) split; PCam ships its own
    pretrained: bool = False
    augment: bool = True  # D4 + light stain/brightness jitter
    class_weighting: bool = True  # loss weights inversely proportional to class counts
    label_smoothing: float = 0.1  # cross-entropy target smoothing (0 = hard labels)
    warmup_epochs: int = 0  # cosine only: linear lr warm-up over the first epochs
    calibration: str = "platt"  # map fitted on validation after training (core.calibration)
    scheduler: str = "cosine"  # cosine (per step) | plateau (on validation score)
    patience: int = 6  # early stopping: epochs without a better validation score
    limit_batches: int | None = None  # cap batches per epoch (train; valid: random subset)
    workers: int | None = None  # DataLoader workers; None: 0 on CPU, up to 4 on CUDA
    precision: str = "auto"  # fp32 | bf16 autocast | auto (bf16 on CUDA, fp32 elsewhere)
    log_every: int = 10  # optimizer steps between metrics lines
    best_fp16: bool = False  # store best.pt weights as float16 (half the file; load as float32)
    # The data randomisation test (core.sanity, Adebayo et al. 2018): the training labels are
    # permuted (seeded by ``seed``), validation keeps the true ones. Such a model learns nothing
    # real; its CAMs should not resemble those of the same recipe trained on the true labels.
    shuffle_labels: bool = False
    stain_norm: str = "none"  # none | macenko | reinhard: target fitted on the training patches

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0"
            for name in ("epochs", "batch_size", "lr", "log_every")
            if getattr(self, name) <= 0
        ]
        problems += [
            f"{name} must be a whole number from 0 to {MAX_SEED}"
            for name in ("seed", "split_seed")
            if not 0 <= getattr(self, name) <= MAX_SEED
        ]
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append("label_smoothing must be in [0, 1)")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append("warmup_epochs must be >= 0 and < epochs")
        if self.calibration not in CALIBRATIONS:
            problems.append(f"calibration must be one of {CALIBRATIONS}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler must be one of {SCHEDULERS}")
        if self.device.split(":")[0] not in DEVICES:
            problems.append(f"device must be one of {DEVICES}")
        if self.stain_norm not in STAIN_NORMS:
            problems.append(f"stain_norm must be one of {STAIN_NORMS}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}")
        if self.img_size is not None and self.img_size < MIN_INPUT_SIZE:
            problems.append(f"img_size must be >= {MIN_INPUT_SIZE}")
        if problems:
            raise InputError("Invalid training config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_form(cls, data: str, model: str | None, values: Mapping[str, Any]) -> TrainConfig:
        """A config from form widgets (field name -> widget value): numbers are cast to the
        field's type (number inputs may return floats) and a batch limit of 0 means "all"."""
        cast = {
            name: value if DEFAULTS[name] is None else type(DEFAULTS[name])(value)
            for name, value in values.items()
        }
        if "limit_batches" in cast:
            cast["limit_batches"] = int(cast["limit_batches"] or 0) or None
        return cls(data=data, model=model, **cast)


def recommended_model(image_size: int) -> str:
    """The default model for a dataset's patch size, chosen by measurement (README, "Measured
    figures"): bn_cnn for small patches (50 px IDC), hcd_cnn otherwise (96 px PCam/HCD)."""
    return "bn_cnn" if image_size <= 64 else "hcd_cnn"


DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING
}
