"""Training augmentation on the device, on uint8 batches: a random D4 transform per patch (the
same group as TTA, core.d4), then light HED stain jitter and brightness jitter.

Randomness comes from ``epoch_generator(seed, epoch, rank)``, so the augmentations of an epoch
are the same whether or not the run was resumed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from core.d4 import D4_GROUP
from core.device import one_thread, to_device

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
        """uint8 N×H×W×3 on any device -> augmented uint8 N×H×W×3 on the same device.

        Every random draw is made on the host (``generator`` is a CPU generator) and copied
        over without waiting; the device only gathers and computes. Each patch's D4 transform
        is a gather through a precomputed index map, never a boolean mask (``out[mask] = ...``
        makes the host wait for the device once per transform).
        """
        n, h, w, _ = images.shape
        maps = d4_index_maps(h, w, images.device)
        with one_thread():  # tiny host math: OpenMP regions would cost more than the work
            ops = torch.randint(0, len(maps), (n,), generator=generator)
            matrix, offset = self.colour_transform(n, generator)
        ops, matrix, offset = (to_device(t, images.device) for t in (ops, matrix, offset))
        index = maps.index_select(0, ops).unsqueeze(-1).expand(n, h * w, 3)
        x = images.reshape(n, h * w, 3).gather(1, index)
        return recolour(x, matrix, offset).view(n, h, w, 3)

    def colour_transform(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch (3×3 matrix, 1×3 offset) acting on log RGB, drawn from ``generator``."""
        return self.colour_transform_of(torch.rand(n, 7, generator=generator))

    def colour_transform_of(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (3×3 matrix, 1×3 offset) of each row of ``u`` (n×7 uniforms in [0, 1): three
        stain scales, three stain shifts, one brightness), acting on log RGB.

        skimage's HED: stains = log(rgb) / L @ H (L = log 1e-6, H = hed_from_rgb), and back
        rgb = exp(stains · L @ R) (R = rgb_from_hed). Jittering stains -> stains · α + β and
        scaling brightness by f is therefore log(rgb) @ (H diag(α) R) + (L β R + log f).
        """
        alpha = 1 + self.stain_scale * (2 * u[:, 0:3] - 1)
        beta = self.stain_shift * (2 * u[:, 3:6] - 1)
        factor = 1 + self.brightness * (2 * u[:, 6] - 1)
        matrix = _HED_FROM_RGB @ torch.diag_embed(alpha) @ _RGB_FROM_HED
        offset = (_LOG_ADJUST * beta) @ _RGB_FROM_HED + torch.log(factor)[:, None]
        return matrix, offset[:, None, :]


def recolour(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """uint8 n×P×3 pixels -> uint8 n×P×3 through each patch's affine map in log RGB
    (``Augmentation.colour_transform``): HED jitter and brightness in one batched product."""
    log_rgb = x.float().div_(255.0).clamp_(min=1e-6).log_()
    log_rgb = torch.baddbmm(offset, log_rgb, matrix)
    rgb = log_rgb.exp_().mul_(255.0).round_().clamp_(0, 255)
    return rgb.to(torch.uint8)


@functools.cache
def d4_index_maps(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(ops, h·w) int64: row j maps each output pixel of transform j to its source pixel, for
    the D4 transforms that keep an h×w patch's shape (all 8 when square; else the 4 without a
    quarter turn), in ``D4_GROUP`` order."""
    grid = torch.arange(h * w).view(h, w)
    maps = [t.apply(grid).reshape(-1) for t in D4_GROUP if h == w or t.k % 2 == 0]
    return to_device(torch.stack(maps), device)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One seed per run seed, epoch and rank (core.train seeds dropout from it too)."""
    return seed * 1_000_003 + epoch * 1_009 + rank


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, rank))
