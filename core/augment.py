"""Training augmentation on the device, on uint8 batches: a random D4 transform per patch (the
same group as TTA, core.d4), then light HED stain jitter and brightness jitter.

Randomness comes from ``epoch_generator(seed, epoch, rank)``, so the augmentations of an epoch
are the same whether or not the run was resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.d4 import D4_GROUP

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
