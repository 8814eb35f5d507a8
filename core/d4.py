"""The 8 symmetries of the square (dihedral group D4).

Histology patches have no orientation, so these are the natural augmentations and test-time
augmentations. Each transform acts on the last two axes (H, W) of a torch tensor or numpy array,
so the same code serves NCHW batches, NHWC-free CAM maps (N, H, W) and single images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class D4:
    """Rotate by ``k`` quarter turns (counter-clockwise), after a horizontal flip if ``flip``."""

    k: int
    flip: bool

    def apply(self, x):
        if self.flip:
            x = _flip(x)
        return _rot90(x, self.k)

    def invert(self, x):
        x = _rot90(x, -self.k)
        return _flip(x) if self.flip else x


D4_GROUP: tuple[D4, ...] = tuple(D4(k, flip) for flip in (False, True) for k in range(4))


def _rot90(x, k: int):
    if isinstance(x, np.ndarray):
        return np.rot90(x, k, axes=(-2, -1))
    return x.rot90(k, dims=(-2, -1))


def _flip(x):
    if isinstance(x, np.ndarray):
        return x[..., ::-1]
    return x.flip(-1)
