"""Reference SSIM values for tests/test_sanity.py, made with scikit-image (not a HistoLens
dependency: run this in a throwaway environment with ``pip install scikit-image``):

    python tests/reference/ssim_reference.py   # rewrites tests/reference/ssim_reference.json

The maps are defined by formula (``reference_maps``), so the test rebuilds the same inputs
without storing them. skimage's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0)`` is Wang et al. (2004)'s SSIM, which
core.sanity.ssim implements.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_suffix(".json")


def reference_maps(size: int = 48) -> dict[str, np.ndarray]:
    """Maps in [0, 1]: blobs, a ramp, a texture, a map and its transpose (not symmetric)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)

    def blob(cy, cx, s):
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s**2))

    texture = 0.5 + 0.25 * np.sin(17 * x + 3 * y) * np.cos(11 * y - 5 * x)
    asym = blob(0.3, 0.7, 0.12) + 0.6 * blob(0.75, 0.2, 0.2) + 0.3 * x
    return {
        "blob": blob(0.5, 0.5, 0.2),
        "blob_shifted": blob(0.55, 0.4, 0.25),
        "ramp": x,
        "texture": texture,
        "asym": asym / asym.max(),
        "asym_transposed": (asym / asym.max()).T.copy(),
        "zeros": np.zeros((size, size)),
    }


PAIRS = (
    ("blob", "blob_shifted"),
    ("blob", "ramp"),
    ("texture", "blob"),
    ("asym", "asym_transposed"),
    ("texture", "texture"),
    ("zeros", "blob"),
)


def main() -> None:
    import skimage
    from skimage.metrics import structural_similarity

    maps = reference_maps()
    values = {
        f"{a}|{b}": float(
            structural_similarity(
                maps[a],
                maps[b],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
        )
        for a, b in PAIRS
    }
    OUT.write_text(
        json.dumps({"scikit-image": skimage.__version__, "ssim": values}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
