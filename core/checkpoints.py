"""Checkpoints = weights + model card, written atomically and loaded safely.

On disk a checkpoint is a ``torch.save`` of a plain dict::

    {"format": "histolens-checkpoint", "format_version": 1,
     "card": {...ModelCard fields, JSON-able...},
     "state_dict": {name: tensor},
     ...extra (e.g. optimizer/scheduler state and epoch in last.pt)}

It is always loaded with ``torch.load(weights_only=True)``, so a pickle that tries to run code is
refused by torch itself; we turn that, truncation and foreign files into one clear message.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import io
import math
import pickle
import platform
import re
import shutil
import threading
import weakref
import zipfile
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import __version__
from core.config import CLASS_NAMES
from core.data.registry import MAX_SEED
from core.errors import InputError
from core.files import file_sha256, write_atomic, write_bytes_atomic
from core.models import MODELS, build_model, get_spec, get_target_layer
from core.stain import target_problem
from core.train_config import MIN_INPUT_SIZE

if TYPE_CHECKING:  # torch is imported where weights are touched: reading a card needs none
    import torch
    from torch import nn

FORMAT = "histolens-checkpoint"
FORMAT_VERSION = 1
# torch.save stores zip records uncompressed, so a record that inflates far beyond the file is
# forged (a deflate bomb); its declared sizes are checked before torch reads anything.
MAX_INFLATION = 2.0
MAX_CHECKPOINT_BYTES = 4 * 2**30
INPUT_SIZES = (MIN_INPUT_SIZE, 1024)
DATASET_FORMATS = ("", "pcam", "hcd", "idc")


class CheckpointError(InputError):
    """A file that cannot be used as a HistoLens checkpoint; the message says why and what to do."""


def current_versions() -> dict[str, str]:
    """The versions a card records. torchvision's is read from its installed metadata, not
    by importing it: ``import torchvision`` imports torch._dynamo (3-4 s, ~150 MB), which
    a model of our own (hcd_cnn, bn_cnn, ...) never needs."""
    import torch

    try:
        vision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision = "not installed"
    return {
        "histolens": __version__,
        "torch": str(torch.__version__),  # TorchVersion is not weights_only-safe
        "torchvision": vision,
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class ModelCard:
    """Everything a consumer needs to use the weights correctly (preprocessing comes from here)."""

    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str
    class_names: tuple[str, ...] = CLASS_NAMES
    dataset: str = ""  # dataset path or name it was trained on
    dataset_format: str = ""  # pcam | hcd | idc
    split_manifest_id: str = ""
    seed: int = 0  # the training seed (weights, batch order, augmentation)
    # The seed its data split was drawn with; None on cards written before the two were apart,
    # when ``seed`` drew the split too (use ``data_split_seed``).
    split_seed: int | None = None
    synthetic_data: bool = False
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Learnt on validation after training (core.calibration); the defaults (identity, 0.5) are
    # what checkpoints written before calibration existed mean.
    calibration: dict[str, Any] = field(
        default_factory=dict
    )  # Calibration.to_dict(); {} = identity
    # why the map is not the method asked for ("" when it is; core.calibration's guard)
    calibration_note: str = ""
    threshold: float = 0.5  # default operating point: maximum balanced accuracy on validation
    operating_points: dict[str, float] = field(default_factory=dict)  # rule -> threshold
    # split-conformal quantiles fitted on validation (core.conformal); {} = no sets
    conformal: dict[str, Any] = field(default_factory=dict)
    # The stain target every patch is normalised to before the model (core.stain; fitted on
    # the training patches by `train --stain-norm`); {} = none, what older checkpoints mean.
    stain_norm: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=current_versions)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def for_model(cls, arch: str, input_size: int | None = None, **kwargs: Any) -> ModelCard:
        """A card whose preprocessing and target layer come from the registry entry of ``arch``."""
        spec = get_spec(arch)
        return cls(
            arch=arch,
            input_size=int(input_size or spec.input_size),
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            target_layer=spec.target_layer,
            **kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def data_split_seed(self) -> int:
        """The seed to open its dataset with, so that its test split is the one it never saw."""
        return self.seed if self.split_seed is None else self.split_seed

    def calibrated(self, prob):
        """Calibrated P(tumour) from the model's softmax P(tumour) (identity when none)."""
        from core.calibration import Calibration

        return Calibration.from_dict(self.calibration).apply(prob)

    @property
    def is_calibrated(self) -> bool:
        """Whether validation taught this card its calibration map and operating points: true of
        every best.pt training writes, and of an exported checkpoint imported back (core.interop
        folds the map into the weights and keeps the operating points)."""
        return bool(self.calibration or self.operating_points)

    @property
    def not_calibrated_why(self) -> str | None:
        """None when calibrated; else why not, and what that means for its numbers."""
        if self.is_calibrated:
            return None
        return (
            "its card holds no calibration map or operating point learnt on validation (saved "
            "before HistoLens calibrated checkpoints, imported weights, or a run's last.pt), so "
            f"P(tumour) is the model's raw softmax, called at {self.threshold:g}; "
            "`python -m core calibrate` fits both on its validation split"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """The card, every field type- and range-checked (a CheckpointError names the field)."""
        known = {f.name for f in fields(cls)}
        missing = {"arch", "input_size", "mean", "std", "target_layer"} - data.keys()
        if missing:
            raise CheckpointError(f"model card is missing {sorted(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            problem = CARD_CHECKS[key](value)
            if problem:
                raise CheckpointError(
                    f"model card field {key!r} is {_shown(value)}: expected {problem}"
                )
        for key in ("mean", "std", "class_names"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_calibration(value: Any) -> bool:
    from core.calibration import METHODS

    return (
        isinstance(value, dict)
        and set(value) == {"method", "a", "b"}
        and value["method"] in METHODS
        and _is_number(value["a"])
        and value["a"] > 0
        and _is_number(value["b"])
    )


def _is_conformal(value: Any) -> bool:
    quantiles = value.get("quantiles") if isinstance(value, dict) else None
    return (
        isinstance(value, dict)
        and set(value) == {"score", "n_valid", "quantiles"}
        and value["score"] == "lac"
        and _is_int(value["n_valid"])
        and value["n_valid"] >= 0
        and isinstance(quantiles, dict)
        and all(_is_probability_text(k) for k in quantiles)
        and all(_is_number(q) and 0 <= q <= 1 for q in quantiles.values())
    )


def _is_probability_text(text: Any) -> bool:
    try:
        return isinstance(text, str) and 0 < float(text) < 1
    except ValueError:
        return False


def _triple(low: float, high: float, what: str):
    def check(value):
        ok = isinstance(value, list | tuple) and len(value) == 3
        ok = ok and all(_is_number(v) and low <= v <= high for v in value)
        return None if ok else f"three numbers {what} (one per RGB channel)"

    return check


def _expect(test, what: str):
    return lambda value: None if test(value) else what


# One check per card field: None when the value is fine, else what was expected.
CARD_CHECKS = {
    "arch": _expect(lambda v: v in MODELS, f"one of {', '.join(MODELS)}"),
    "input_size": _expect(
        lambda v: _is_int(v) and INPUT_SIZES[0] <= v <= INPUT_SIZES[1],
        f"a whole number of pixels {INPUT_SIZES[0]}..{INPUT_SIZES[1]}",
    ),
    "mean": _triple(0.0, 1.0, "in 0..1"),
    "std": _triple(1e-3, 10.0, "in 0.001..10"),
    "target_layer": _expect(lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a layer name"),
    "class_names": _expect(
        lambda v: (
            isinstance(v, list | tuple)
            and len(v) == 2
            and all(isinstance(c, str) for c in v)
            and v[0] != CLASS_NAMES[1]  # every consumer reads P(tumour) from output 1
        ),
        f"two class names, {CLASS_NAMES[1]} second (output 1 is P({CLASS_NAMES[1]}))",
    ),
    "dataset": _expect(lambda v: isinstance(v, str), "a text (the dataset path)"),
    "dataset_format": _expect(lambda v: v in DATASET_FORMATS, "pcam, hcd or idc"),
    "split_manifest_id": _expect(lambda v: isinstance(v, str), "a text (a split manifest id)"),
    "seed": _expect(lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"a whole number 0..{MAX_SEED}"),
    "split_seed": _expect(
        lambda v: v is None or (_is_int(v) and 0 <= v <= MAX_SEED),
        f"null or a whole number 0..{MAX_SEED}",
    ),
    "synthetic_data": _expect(lambda v: isinstance(v, bool), "true or false"),
    "train_config": _expect(lambda v: isinstance(v, dict), "a mapping"),
    "metrics": _expect(lambda v: isinstance(v, dict), "a mapping"),
    "calibration": _expect(
        lambda v: v == {} or _is_calibration(v), "{} or {method, a > 0, b} (core.calibration)"
    ),
    "calibration_note": _expect(
        lambda v: isinstance(v, str) and len(v) <= 300, "a text of at most 300 characters"
    ),
    "threshold": _expect(lambda v: _is_number(v) and 0 <= v <= 1, "a probability 0..1"),
    "operating_points": _expect(
        lambda v: isinstance(v, dict) and all(_is_number(t) and 0 <= t <= 1 for t in v.values()),
        "a mapping of rule -> probability 0..1",
    ),
    "conformal": _expect(
        lambda v: v == {} or _is_conformal(v),
        '{} or {score: "lac", n_valid, quantiles: {alpha: q 0..1}} (core.conformal)',
    ),
    "stain_norm": target_problem,
    "versions": _expect(lambda v: isinstance(v, dict), "a mapping"),
    "created": _expect(lambda v: isinstance(v, str), "a text (a timestamp)"),
}


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # in eval mode, on the requested device
    card: ModelCard
    path: Path
    sha256: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def save_checkpoint(path: str | Path, model: nn.Module, card: ModelCard, **extra: Any) -> Path:
    """Write weights + card to ``path`` atomically (core.files.write_atomic): a reader (or a job
    killed mid-write) never sees a half-written checkpoint.
    """
    import torch

    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "card": card.to_dict(),
        "state_dict": state,
    }
    payload.update(extra)
    return write_atomic(path, lambda fh: torch.save(payload, fh))


def save_with_card(path: str | Path, out: str | Path, card: ModelCard) -> Path:
    """Write a copy of the checkpoint at ``path`` to ``out`` (atomically) with ``card`` as its
    model card: the weights stay as they are, float16 ones included."""
    import torch

    payload = load_payload(path)
    payload["card"] = card.to_dict()
    return write_atomic(out, lambda fh: torch.save(payload, fh))


def load_payload(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (weights_only=True). Raises CheckpointError.

    ``mmap`` maps the tensors instead of reading them (bench/card_read.py).
    """
    import torch

    path = _existing(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise _refused(path, _unpickler_reason(exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _corrupt(path, exc) from None
    return _checked(payload, path)


def _existing(path: str | Path) -> Path:
    """``path`` when it is a non-empty file whose zip records are plausible; else the one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty; re-save or re-train the checkpoint")
    _check_kind(path)
    _check_records(path)
    return path


# What a file that is not a checkpoint most often is, by its first bytes.
_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"\x1f\x8b": "a gzip file (unpack it first?)",
    b"\x89HDF": "an HDF5 file",
    b"{": "JSON or text",
}


_PICKLE_STARTS = {bytes([0x80, protocol]) for protocol in range(2, 6)}


def _check_kind(path: Path) -> None:
    """Refuse a file that is neither a zip archive (what ``torch.save`` writes) nor a pickle
    (torch's legacy format, which ``torch.load`` still reads), naming what it looks like:
    pickle's own error for random bytes reads as if the file held forbidden Python objects."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK") or head[:2] in _PICKLE_STARTS:
        return
    what = next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)
    if what is None:
        printable = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        what = "text" if printable else f"unrecognised data (first bytes {head[:4].hex(' ')})"
    raise CheckpointError(
        f"{path}: not a checkpoint archive: it looks like {what}, and torch.save writes a zip "
        "archive. Give a .pt file written by HistoLens (`python -m core train` or `import`)."
    )


def _refused(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused — it holds Python objects other than tensors and plain data "
        f"({reason}). Only load checkpoints written by HistoLens."
    )


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}); re-copy or re-train it"
    )


def _checked(payload: Any, path: Path) -> dict[str, Any]:
    """The payload when it is a HistoLens checkpoint dict this version reads."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a HistoLens checkpoint (no model card); train one with `python -m core train`"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer HistoLens (format {payload['format_version']})"
        )
    if not isinstance(payload.get("card"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: checkpoint has no card or no weights")
    return payload


class _CardUnpickler(pickle.Unpickler):
    """The pickle inside a ``torch.save`` archive, read without torch: every tensor becomes
    ``TENSOR`` (its bytes are never read), and any global other than the four a state dict
    needs is refused, as ``weights_only`` refuses it (its allow-list is wider than this one)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return _tensor
        if module == "torch" and re.fullmatch(r"[A-Za-z0-9]+Storage", name):
            return name  # a storage type: only ever an argument of the tensor placeholder
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")

    def persistent_load(self, pid: Any) -> None:
        return None  # a tensor's storage record, left unread


TENSOR = "<tensor>"


def _tensor(*_args: Any) -> str:
    return TENSOR


def _light_payload(path: Path) -> dict[str, Any]:
    """The checkpoint dict with tensors as ``TENSOR``: no torch import, no weights read."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            data = archive.read(name)
    except StopIteration:
        raise _corrupt(path, zipfile.BadZipFile("no data.pkl")) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise _corrupt(path, exc) from None
    try:
        payload = _CardUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise _refused(path, str(exc)) from None
    except Exception as exc:  # a damaged pickle can raise almost anything
        raise _corrupt(path, exc) from None
    return _checked(payload, path)


def _check_records(path: Path) -> None:
    """Refuse a zip whose records declare more bytes than torch.save could have written."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip (legacy format, garbage): torch.load's own error says so below
    if declared > min(MAX_INFLATION * size + 2**20, MAX_CHECKPOINT_BYTES):
        raise CheckpointError(
            f"{path}: its records claim {declared / 2**20:,.0f} MiB inside a "
            f"{size / 2**20:,.1f} MiB file (a compressed bomb, not written by torch.save); "
            "refused without loading."
        )


def _unpickler_reason(exc: Exception) -> str:
    """The one informative line of torch's long weights_only error."""
    for line in str(exc).splitlines():
        if "Unpickler error" in line or "Unsupported global" in line:
            return line.split(":", 1)[-1].strip()
    return "weights_only load failed"


def card_of(payload: dict[str, Any], path: str | Path) -> ModelCard:
    """The validated card of a loaded payload; a bad field is a CheckpointError naming ``path``."""
    try:
        return ModelCard.from_dict(payload["card"])
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}; re-save it with `python -m core train`") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unusable model card ({err})") from None


def read_card(path: str | Path) -> ModelCard:
    """The model card alone, without torch and without reading the weights: the archive's
    pickle through an allow-list narrower than ``weights_only``'s (a pickle with code, a foreign
    or damaged file: the same one-line errors as load_checkpoint). A file that is not a zip
    (torch's legacy format, garbage) goes through torch.load. Pages use the cached
    core.catalogue.read_card."""
    path = _existing(path)
    payload = _light_payload(path) if zipfile.is_zipfile(path) else load_payload(path, mmap=True)
    return card_of(payload, path)


def check_finite_weights(state_dict: dict[str, Any], path: str | Path) -> None:
    """Weights with NaN or inf (a diverged run) would print P(tumour) = nan: refuse them."""
    import torch

    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{path}: weights {name!r} hold NaN or inf (training diverged); "
                    "use an earlier checkpoint or retrain with a lower learning rate"
                )


def check_finite_probabilities(probs, path: str | Path):
    """``probs`` unchanged when every value is a number in 0..1; a CheckpointError otherwise."""
    import numpy as np

    probs = np.asarray(probs)
    bad = ~np.isfinite(probs)
    if bad.any():
        raise CheckpointError(
            f"{path}: the model output NaN or inf for {int(bad.sum())} of {probs.size} patches "
            "(numerically broken weights); retrain or use another checkpoint"
        )
    return probs


# One lock per model object, shared by all threads of the process on purpose: the lock must be
# as shared as the cached model it protects. Weak keys let unloaded models (and locks) go away.
_MODEL_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """The lock that guards every hook registration / layer swap on ``model``."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from its card, load the weights strictly, move to ``device``, eval mode."""
    path = Path(path)
    payload = load_payload(path)
    card = card_of(payload, path)
    model, _ = build_model(card.arch, pretrained=False)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {card.arch!r}: {str(exc).splitlines()[0]}"
        ) from None
    check_finite_weights(payload["state_dict"], path)
    try:
        get_target_layer(model, card.target_layer)
    except InputError as err:
        raise CheckpointError(f"{path}: model card field 'target_layer': {err}") from None
    model.to(device).eval()
    return LoadedModel(model=model, card=card, path=path, sha256=file_sha256(path))


# The server refuses any upload over .streamlit/config.toml's server.maxUploadSize (Streamlit 1.67
# checks every upload against it, whatever a widget's max_upload_size says), so this cap is that
# one: a best.pt of the models training picks by default is 4.7-9.8 MB (bn_cnn, hcd_cnn); a
# resnet18 (45 MB) is used from the checkpoints folder of a local run instead.
MAX_UPLOADED_CHECKPOINT_BYTES = 20 * 2**20
KEEP_UPLOADED_CHECKPOINTS = 8  # files kept under the upload folder, newest first


def load_uploaded_checkpoint(
    name: str, data: bytes, folder: Path, max_bytes: int = MAX_UPLOADED_CHECKPOINT_BYTES
) -> LoadedModel:
    """A visitor's checkpoint, validated exactly as ``load_checkpoint`` (card required,
    ``weights_only``) plus one forward pass at the card's input size. Kept as
    ``folder/upload-<sha256[:12]>/<name>.pt`` so evaluation can read it and tables can name it
    (only the session that uploaded it knows the path; the oldest beyond 8 are removed).
    A refusal is one CheckpointError line naming ``name``, never the server's folders."""
    if len(data) > max_bytes:
        raise CheckpointError(
            f"{name}: {len(data) / 2**20:.0f} MB is over the {max_bytes / 2**20:.0f} MB limit "
            "for uploaded checkpoints"
        )
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem)[:40] or "checkpoint"
    path = Path(folder) / f"upload-{hashlib.sha256(data).hexdigest()[:12]}" / f"{stem}.pt"
    try:
        if not path.is_file():
            write_bytes_atomic(path, data)
        loaded = load_checkpoint(path)
        _check_input_size(loaded)
    except CheckpointError as err:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise CheckpointError(str(err).replace(str(path), name)) from None
    _prune(Path(folder), keep=path.parent)
    return loaded


def _check_input_size(loaded: LoadedModel) -> None:
    import torch

    size = loaded.card.input_size
    try:
        with torch.no_grad():
            logits = loaded.model(torch.zeros(1, 3, size, size))
    except RuntimeError as exc:
        raise CheckpointError(
            f"{loaded.path}: the card's input size {size} px does not fit its weights "
            f"({str(exc).splitlines()[0]})"
        ) from None
    if tuple(logits.shape) != (1, len(CLASS_NAMES)):
        raise CheckpointError(
            f"{loaded.path}: gives {tuple(logits.shape)} outputs for one {size} px patch, "
            f"not {len(CLASS_NAMES)} classes"
        )


def _prune(folder: Path, keep: Path) -> None:
    uploads = sorted(folder.glob("upload-*"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in uploads[KEEP_UPLOADED_CHECKPOINTS:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
