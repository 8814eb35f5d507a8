"""Models trained elsewhere, in and out: notebook weights -> carded checkpoint -> TorchScript.

Import reads either

- a plain ``state_dict`` as a notebook writes it (``torch.save(model.state_dict(), path)``),
  loaded with ``torch.load(weights_only=True)``; a wrapping dict (``{"state_dict": ...}``,
  ``{"model_state_dict": ...}``, ``{"model": ...}``) and the ``module.`` (DataParallel) or
  ``_orig_mod.`` (torch.compile) key prefixes are unwrapped; or
- a TorchScript archive (``torch.jit.save``): its weights are read, and its own outputs are the
  reference the imported model must match (max |ΔP| ≤ ``PARITY_TOLERANCE``) before anything is
  written.

Keys and shapes must fit the registered architecture exactly (one line names the first
mismatch). The head may have 2 outputs (softmax; ``classes`` says which is tumour) or 1 (sigmoid
of the second class named): a 1-logit head z becomes the 2-logit head (-z/2, z/2), whose softmax
is exactly sigmoid(z), so every HistoLens consumer (CAMs included) works unchanged.

Export writes the checkpoint's model as TorchScript: logits N×2 (normal, tumour) for normalised
N×3×S×S input, whose softmax is the checkpoint's **calibrated** P(tumour), exactly what
``predict_proba`` returns. The card's calibration map sigmoid(a·z + b) of the logit difference z is
folded into the final Linear (its two rows become ∓(a·Δw)/2, ∓(a·Δc + b)/2), so the file stays the
registered architecture with a plain 2-logit head: ``softmax(out)[:, 1]`` is what a user of a
2-class classifier computes anyway, CAM tools that target a logit keep working, argmax calls
tumour at calibrated P ≥ 0.5, and ``python -m core import`` reads the file back unchanged. The card
inside (``histolens_card.json``) therefore says identity calibration and keeps the threshold (on
calibrated P); ``histolens_export.json`` records the folded map, the output contract and the
device/precision of the parity check (max |ΔP| against ``predict_proba`` on random patches).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pickle
import re
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.checkpoints import CheckpointError, ModelCard, load_checkpoint, save_checkpoint
from core.config import CLASS_NAMES
from core.files import file_sha256, write_bytes_atomic
from core.models import MODELS, build_model, get_spec, get_target_layer

PARITY_TOLERANCE = 1e-5
CARD_FILE = "histolens_card.json"
EXPORT_FILE = "histolens_export.json"  # output contract, folded calibration, parity
TORCHSCRIPT_SUFFIXES = (".ts", ".jit", ".torchscript")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
KEY_PREFIXES = ("module.", "_orig_mod.")


@contextlib.contextmanager
def _quiet_jit():
    """torch.jit is deprecated in favour of torch.export, but TorchScript is what notebooks and
    serving stacks exchange today: silence only that FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled code (``constants.pkl``, ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], nn.Module | None]:
    """(state_dict, TorchScript module or None) of a weights file; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckpointError(f"{path}: no such weights file, or it is empty")
    if is_torchscript(path):
        return _read_torchscript(path)
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        raise CheckpointError(f"{path}: not a TorchScript archive (no compiled code inside)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it all
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it would import {found.group(1)}" if found else "pickle code, not tensors"
        raise CheckpointError(
            f"{path}: refused — it holds Python objects ({what}); in the notebook save "
            "torch.save(model.state_dict(), path) instead"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a PyTorch weights file, or truncated ({type(exc).__name__})"
        ) from None
    return _unwrap(obj, path), None


def _read_torchscript(path: Path) -> tuple[dict[str, torch.Tensor], nn.Module]:
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and others for damaged archives
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(
            f"{path}: not a loadable TorchScript archive ({type(exc).__name__}: {first})"
        ) from None
    return _strip_prefixes(dict(module.state_dict())), module.eval()


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (
        isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise CheckpointError(
            f"{path}: holds no state_dict (a dict of tensors, as torch.save(model.state_dict(), "
            "path) writes)"
        )
    return _strip_prefixes(obj)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in KEY_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def parse_classes(text: str) -> tuple[str, str]:
    """``"normal,tumour"`` -> the head's output order; must name both HistoLens classes."""
    names = tuple(name.strip().lower() for name in text.split(","))
    if sorted(names) != sorted(CLASS_NAMES):
        raise CheckpointError(
            f"--classes {text!r}: name the head's outputs in order, using {', '.join(CLASS_NAMES)}"
        )
    return names  # type: ignore[return-value]


def fit_weights(
    state: dict[str, torch.Tensor], arch: str, classes=CLASS_NAMES
) -> tuple[nn.Module, str]:
    """The registered ``arch`` with ``state`` loaded strictly, head mapped to (normal, tumour).

    Returns (model in eval mode, head kind "softmax-2" | "sigmoid-1")."""
    model, _ = build_model(arch)
    head_module = get_target_layer(model, get_spec(arch).classifier)
    head = next(name for name, module in model.named_modules() if module is head_module)
    expected = model.state_dict()
    _check_keys(state, expected, arch)
    head_keys = (f"{head}.weight", f"{head}.bias")
    for key, tensor in expected.items():
        if key not in head_keys and state[key].shape != tensor.shape:
            raise CheckpointError(
                f"weights do not fit {arch}: {key} has shape {tuple(state[key].shape)}, "
                f"{arch} expects {tuple(tensor.shape)}{_other_fit(state, arch)}"
            )
    weight, bias = state[head_keys[0]], state[head_keys[1]]
    width = expected[head_keys[0]].shape[1]
    if weight.ndim != 2 or weight.shape[1] != width or bias.shape != weight.shape[:1]:
        raise CheckpointError(
            f"weights do not fit {arch}: head {head_keys[0]} has shape {tuple(weight.shape)}, "
            f"expected (2, {width}) or (1, {width})"
        )
    weight, bias, kind = _two_class_head(weight, bias, tuple(classes), arch, head_keys[0])
    model.load_state_dict({**state, head_keys[0]: weight, head_keys[1]: bias}, strict=True)
    return model.eval(), kind


def _check_keys(state, expected, arch: str) -> None:
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        first = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise CheckpointError(
            f"weights do not fit {arch}: {first} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected){_other_fit(state, arch)}"
        )


def _other_fit(state, arch: str) -> str:
    """'; they fit NAME (--arch NAME)' when another registered architecture takes these keys."""
    for name in MODELS:
        if name == arch:
            continue
        with torch.device("meta"):  # no memory, no init cost: only names and shapes
            candidate = build_model(name)[0].state_dict()
        same_keys = candidate.keys() == state.keys()
        if same_keys and all(
            candidate[k].shape[1:] == state[k].shape[1:] for k in candidate if candidate[k].ndim
        ):
            return f"; they fit {name} (--arch {name})"
    return ""


def _two_class_head(weight, bias, classes, arch: str, key: str):
    tumour_first = classes[0] == "tumour"
    if weight.shape[0] == 2:
        order = [1, 0] if tumour_first else [0, 1]
        return weight[order], bias[order], "softmax-2"
    if weight.shape[0] == 1:
        sign = -1.0 if tumour_first else 1.0  # sigmoid is P(second class named)
        half_w, half_b = sign * weight / 2, sign * bias / 2
        return torch.cat([-half_w, half_w]), torch.cat([-half_b, half_b]), "sigmoid-1"
    raise CheckpointError(
        f"weights do not fit {arch}: head {key} has {weight.shape[0]} outputs; HistoLens takes "
        "2 (softmax over normal, tumour) or 1 (sigmoid)"
    )


def reference_probs(module: nn.Module, x: torch.Tensor, classes=CLASS_NAMES) -> np.ndarray:
    """P(tumour) from a foreign model's raw outputs (1 sigmoid logit or 2 softmax logits)."""
    with torch.inference_mode():
        out = module(x).float()
    if out.ndim == 2 and out.shape[1] == 1:
        p_second = torch.sigmoid(out[:, 0])
        return (1 - p_second if classes[0] == "tumour" else p_second).numpy()
    return torch.softmax(out, dim=1)[:, list(classes).index("tumour")].numpy()


def _random_patches(card: ModelCard, n: int = 16, seed: int = 0) -> np.ndarray:
    size = card.input_size
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def _random_batch(card: ModelCard, n: int = 16, seed: int = 0) -> torch.Tensor:
    from core.preprocess import to_model_input

    return to_model_input(_random_patches(card, n, seed), card)


def _probs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(x).float(), dim=1)[:, 1].numpy()


def import_weights(
    weights: str | Path,
    arch: str,
    out: str | Path,
    input_size: int | None = None,
    mean=None,
    std=None,
    classes=CLASS_NAMES,
    dataset: str | Path | None = None,
) -> tuple[Path, ModelCard]:
    """Write a carded HistoLens checkpoint from foreign weights; nothing is written on error."""
    weights, out = Path(weights), Path(out)
    if arch not in MODELS:
        raise CheckpointError(f"unknown architecture {arch!r}; choose one of: {', '.join(MODELS)}")
    if out.exists():
        raise CheckpointError(f"{out}: already exists; choose another --out")
    state, torchscript = read_weights(weights)
    exported = exported_card(weights, arch) if torchscript is not None else None
    try:
        model, head = fit_weights(state, arch, classes)
    except CheckpointError as err:
        raise CheckpointError(f"{weights}: {err}") from None
    carried = _dataset_fields(dataset)
    if exported is not None:  # our own export: its card's fields unless the command sets them
        input_size = input_size or exported.input_size
        mean, std = mean or exported.mean, std or exported.std
        carried = {**_carried_data(exported), **carried, **_operating_point(exported)}
    card = ModelCard.for_model(
        arch,
        input_size,
        **carried,
        train_config={
            "imported_from": weights.name,
            "imported_sha256": file_sha256(weights),
            "source": "torchscript" if torchscript is not None else "state_dict",
            "head": head,
            "classes": list(classes),
        },
    )
    overrides = {"mean": mean, "std": std}
    card = replace(card, **{key: tuple(v) for key, v in overrides.items() if v is not None})
    try:  # the checks every loader applies: never write a checkpoint the others then refuse
        ModelCard.from_dict(card.to_dict())
    except CheckpointError as err:
        raise CheckpointError(
            f"{out}: not written: {err} (see --input-size, --mean, --std)"
        ) from None
    if torchscript is not None:
        x = _random_batch(card)
        delta = float(np.abs(_probs(model, x) - reference_probs(torchscript, x, classes)).max())
        if delta > PARITY_TOLERANCE:
            raise CheckpointError(
                f"{weights}: the TorchScript model's P(tumour) differs from {arch} with its "
                f"weights by up to {delta:.2g} (a custom forward?); nothing written"
            )
    return save_checkpoint(out, model, card), card


def exported_card(path: Path, arch: str) -> ModelCard | None:
    """The card ``export_torchscript`` put inside the archive at ``path`` (calibration already
    folded into the weights, so identity), or None for a TorchScript file from elsewhere."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{CARD_FILE}")), None)
            text = archive.read(name) if name else None
    except (OSError, zipfile.BadZipFile):
        return None
    if text is None:
        return None
    try:
        card = ModelCard.from_dict(json.loads(text))
    except (ValueError, TypeError, AttributeError, CheckpointError) as err:
        raise CheckpointError(f"{path}: its {CARD_FILE} is not a model card ({err})") from None
    if card.arch != arch:
        raise CheckpointError(
            f"{path}: exported as {card.arch!r}, imported as {arch!r}; use --arch {card.arch}"
        )
    return card


def _carried_data(card: ModelCard) -> dict:
    """What an exported card says about its training data (``--dataset`` overrides it)."""
    return dict(
        dataset=card.dataset,
        dataset_format=card.dataset_format,
        split_manifest_id=card.split_manifest_id,
        seed=card.seed,
        split_seed=card.split_seed,
        synthetic_data=card.synthetic_data,
    )


def _operating_point(card: ModelCard) -> dict:
    """The threshold(s) learnt on validation: on the calibrated P the exported file outputs."""
    return dict(threshold=card.threshold, operating_points=dict(card.operating_points))


def _dataset_fields(dataset) -> dict:
    """What the card says about training data: the dataset given, split unknown."""
    if dataset is None:
        return {}
    from core.data import open_dataset

    ds = open_dataset(dataset)
    return {
        "dataset": str(Path(dataset).resolve()),
        "dataset_format": ds.format,
        "split_manifest_id": "unknown (imported)",
        "synthetic_data": ds.synthetic,
    }


def calibrated_head(model: nn.Module, card: ModelCard) -> nn.Module:
    """A copy of ``model`` with the card's calibration folded into its final Linear: the logits
    become (-s/2, s/2) with s = a·(l₁ - l₀) + b, whose softmax is sigmoid(s), the calibrated
    P(tumour). The model itself when the map is the identity."""
    from core.calibration import Calibration

    calibration = Calibration.from_dict(card.calibration)
    if calibration.method == "identity":
        return model
    model = copy.deepcopy(model)
    head = get_target_layer(model, get_spec(card.arch).classifier)
    with torch.no_grad():
        weight = calibration.a * (head.weight[1] - head.weight[0])
        bias = calibration.a * (head.bias[1] - head.bias[0]) + calibration.b
        head.weight.copy_(torch.stack([-weight / 2, weight / 2]))
        head.bias.copy_(torch.stack([-bias / 2, bias / 2]))
    return model


def export_torchscript(checkpoint: str | Path, out: str | Path) -> float:
    """Write the checkpoint's model as TorchScript whose softmax is the calibrated P(tumour)
    (``calibrated_head``); returns max |ΔP| against ``predict_proba`` (CPU, fp32). A card that
    normalises stain first (``stain_norm``: per-patch Macenko/Reinhard in numpy, not a tensor
    op TorchScript can hold) is refused: the file would silently skip that step."""
    from core.preprocess import predict_proba

    loaded = load_checkpoint(checkpoint)
    if loaded.card.stain_norm:
        raise CheckpointError(
            f"{checkpoint}: its card normalises stain ({loaded.card.stain_norm['method']}) "
            "before the model, which a TorchScript file cannot carry; not exported"
        )
    card = replace(loaded.card, calibration={})  # the outputs carry the map now
    about = {
        "outputs": "logits N×2 (normal, tumour) for N×3×S×S input normalised as the card says; "
        "softmax(out)[:, 1] is the calibrated P(tumour); call tumour at >= card.threshold",
        "folded_calibration": loaded.card.calibration or {"method": "identity"},
        "threshold": loaded.card.threshold,
        # checked before writing: max |ΔP| against predict_proba on random patches
        "parity": {"tolerance": PARITY_TOLERANCE, "device": "cpu", "precision": "fp32"},
    }
    extra = {CARD_FILE: json.dumps(card.to_dict()), EXPORT_FILE: json.dumps(about)}
    buffer = io.BytesIO()
    with _quiet_jit():
        scripted = torch.jit.script(calibrated_head(loaded.model, loaded.card))
        torch.jit.save(scripted, buffer, _extra_files=extra)
        reloaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
    expected = predict_proba(loaded, _random_patches(card), precision="fp32")
    delta = float(np.abs(expected - reference_probs(reloaded, _random_batch(card))).max())
    if delta > PARITY_TOLERANCE:
        raise CheckpointError(
            f"{checkpoint}: TorchScript export differs by {delta:.2g}; not written"
        )
    write_bytes_atomic(out, buffer.getvalue())
    return delta
