"""From uint8 RGB patches to model input, strictly from the model card.

Training, evaluation, CAMs, comparison, uploads and embeddings all call ``to_model_input`` so
preprocessing can never differ between them. A card with a stain target (``card.stain_norm``,
core.stain) first normalises each patch's stain on the host (a patch that cannot be normalised,
e.g. background, is passed through unchanged). The uint8 batch is then moved to the device (4x
less traffic than float), converted, resized (only if the patch size differs from the card's
input size) and normalised with the card's mean/std there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.checkpoints import LoadedModel, ModelCard, check_finite_probabilities
from core.device import autocast_for, to_device
from core.stain import normalise


def to_model_input(
    images: np.ndarray | torch.Tensor,
    card: ModelCard,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 N×H×W×3 (or H×W×3) RGB -> float32 N×3×S×S: stain-normalised to the card's target
    when it has one, then normalised with the card's mean/std."""
    if isinstance(images, np.ndarray):
        # torch cannot wrap read-only arrays (cached or memory-mapped patches): copy the uint8 data
        images = np.ascontiguousarray(images) if images.flags.writeable else images.copy()
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 RGB patches, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected N×H×W×3 RGB patches, got shape {tuple(x.shape)}")
    if card.stain_norm:  # training passes its augmented batch through here too
        x = torch.from_numpy(normalise(x.cpu().numpy(), card.stain_norm).images)
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    size = card.input_size
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    # torch.tensor(..., device="cuda") would make the host wait for the device
    mean, std = to_device(torch.tensor([card.mean, card.std]), x.device).view(2, 1, 3, 1, 1)
    x = x.sub_(mean).div_(std)  # in place: x is a fresh float tensor; saves two full copies
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)


@torch.inference_mode()
def predict_proba(
    loaded: LoadedModel,
    images: np.ndarray | torch.Tensor,
    batch_size: int = 256,
    precision: str = "auto",
) -> np.ndarray:
    """Calibrated P(tumour) for each uint8 patch (the card's map; identity for checkpoints
    written before calibration existed), computed in batches on the model's device in
    ``precision`` (core.device: auto = bf16 on CUDA, fp32 elsewhere).

    The plain reference path: no prefetching, no TTA, no channels_last. The app's paths
    (``core.evaluate.predict_split``, ``core.explain.compute_cams``) are optimised variants, and
    the tests check each of them against this one, so it stays here beside ``to_model_input``."""
    device = loaded.device
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size], loaded.card, device)
        with autocast_for(device, precision):
            logits = loaded.model(x)
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    probs = torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
    return loaded.card.calibrated(check_finite_probabilities(probs, loaded.path)).astype(np.float32)
