"""Synthetic H&E-like tissue: pink eosin stroma, purple haematoxylin nuclei, white gaps.

``render_slide`` paints one synthetic "slide" and returns it with its tumour mask. Tumour tissue
has larger, denser, darker and more irregular nuclei than normal tissue, which is what a
classifier (and Grad-CAM) should pick up. Everything is drawn from the ``rng`` passed in, so a
seed fixes every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WHITE = np.array([242.0, 240.0, 244.0])


@dataclass(frozen=True)
class NucleusStyle:
    density: float  # nuclei per pixel of tissue
    radius: tuple[float, float]  # uniform range, pixels
    darkness: tuple[int, int]  # 0..255 haematoxylin strength
    irregularity: float  # radial jitter of the outline
    elongation: tuple[float, float]


NORMAL = NucleusStyle(1 / 240, (1.6, 2.6), (135, 185), 0.06, (1.0, 1.8))
TUMOUR = NucleusStyle(1 / 45, (3.0, 5.0), (205, 255), 0.16, (1.0, 1.5))


@dataclass(frozen=True)
class Slide:
    rgb: np.ndarray  # uint8 H×W×3
    tumour: np.ndarray  # bool H×W (tumour region, used for labels and ground-truth masks)
    tissue: np.ndarray  # bool H×W


def smooth_noise(rng, h: int, w: int, cell: float, aspect: float = 1.0) -> np.ndarray:
    """Band-limited noise in [0, 1]: a coarse random grid upsampled bicubically."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / (cell * aspect)) + 2)
    coarse = Image.fromarray(rng.random((gh, gw)).astype(np.float32), mode="F")
    fine = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    lo, hi = fine.min(), fine.max()
    return (fine - lo) / max(hi - lo, 1e-6)


def _draw_nuclei(draw, rng, region: np.ndarray, style: NucleusStyle, scale: float) -> None:
    h, w = region.shape
    count = rng.poisson(style.density * region.sum() / scale**2)
    ys, xs = rng.integers(0, h, count), rng.integers(0, w, count)
    keep = region[ys, xs]
    for cy, cx in zip(ys[keep], xs[keep], strict=True):
        r = rng.uniform(*style.radius) * scale
        stretch = rng.uniform(*style.elongation)
        angle = rng.uniform(0, np.pi)
        theta = np.linspace(0, 2 * np.pi, 13)[:-1]
        radial = r * (1 + style.irregularity * rng.standard_normal(12))
        px, py = radial * np.cos(theta) * stretch, radial * np.sin(theta) / stretch
        rx = cx + px * np.cos(angle) - py * np.sin(angle)
        ry = cy + px * np.sin(angle) + py * np.cos(angle)
        draw.polygon(
            list(zip(rx.tolist(), ry.tolist(), strict=True)),
            fill=int(rng.integers(*style.darkness)),
        )


def render_slide(rng, h: int, w: int, tumour_share: float = 0.35, scale: float = 1.0) -> Slide:
    """One synthetic slide; ``tumour_share`` ~ fraction of tissue that is tumour."""
    tissue_field = smooth_noise(rng, h, w, cell=140 * scale)
    tissue = tissue_field > np.quantile(tissue_field, 0.22)
    holes = smooth_noise(rng, h, w, cell=22 * scale) > 0.86  # small lumina / fat gaps
    tissue &= ~holes
    tumour_field = smooth_noise(rng, h, w, cell=180 * scale)
    tumour = tissue & (tumour_field > np.quantile(tumour_field, 1 - tumour_share))

    # Stain varies per slide, as between labs and scanners.
    eosin = np.array([230.0, 168.0, 200.0]) + rng.normal(0, 6, 3)
    haem = np.array([72.0, 38.0, 122.0]) + rng.normal(0, 6, 3)
    fibres = smooth_noise(rng, h, w, cell=6 * scale, aspect=rng.uniform(3, 6))
    stroma = eosin[None, None, :] * (0.9 + 0.16 * fibres[..., None])

    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    _draw_nuclei(draw, rng, tissue & ~tumour, NORMAL, scale)
    _draw_nuclei(draw, rng, tumour, TUMOUR, scale)
    layer = layer.filter(ImageFilter.GaussianBlur(0.6 * scale))
    chromatin = 0.8 + 0.2 * smooth_noise(rng, h, w, cell=2.5 * scale)
    alpha = (np.asarray(layer, dtype=np.float32) / 255 * 0.92 * chromatin)[..., None]
    rgb = stroma * (1 - alpha) + haem[None, None, :] * alpha

    soft = Image.fromarray((tissue * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
    weight = (np.asarray(soft, dtype=np.float32) / 255)[..., None]
    rgb = rgb * weight + WHITE * (1 - weight)
    return Slide(np.clip(rgb, 0, 255).astype(np.uint8), tumour, tissue)
