"""core.augment: the gather-based D4 + colour augmentation draws exactly what the boolean-mask
version drew (same generator, same patches, same output), keeps non-square patches' shape, and
spreads the eight transforms evenly."""

from __future__ import annotations

import torch

from core.augment import Augmentation, d4_index_maps
from core.d4 import D4_GROUP


def masked_reference(aug: Augmentation, images: torch.Tensor, generator) -> torch.Tensor:
    """The previous implementation (one boolean mask per D4 transform), kept as the reference
    the gather version must reproduce bit for bit."""
    n, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2)
    ops = torch.randint(0, len(D4_GROUP), (n,), generator=generator)
    out = torch.empty_like(x)
    for j in range(len(D4_GROUP)):
        out[ops == j] = D4_GROUP[j].apply(x[ops == j])
    log_rgb = out.permute(0, 2, 3, 1).reshape(n, h * w, 3).float().div_(255).clamp_(min=1e-6).log_()
    matrix, offset = aug.colour_transform(n, generator)
    rgb = torch.baddbmm(offset, log_rgb, matrix).exp_().mul_(255.0).round_().clamp_(0, 255)
    return rgb.to(torch.uint8).view(n, h, w, 3)


def test_gather_version_reproduces_the_boolean_mask_version_exactly():
    images = torch.randint(0, 256, (64, 12, 12, 3), dtype=torch.uint8)
    aug = Augmentation()
    for seed in range(3):
        expected = masked_reference(aug, images, torch.Generator().manual_seed(seed))
        assert torch.equal(aug(images, torch.Generator().manual_seed(seed)), expected)


def test_the_eight_transforms_are_drawn_evenly_and_each_is_a_d4_map():
    h = w = 5
    maps = d4_index_maps(h, w, torch.device("cpu"))
    grid = torch.arange(h * w).view(h, w)
    assert [m.view(h, w).tolist() for m in maps] == [t.apply(grid).tolist() for t in D4_GROUP]
    # identity colours: 1×1 patches of distinct values show which transform each patch got
    plain = Augmentation(stain_scale=0, stain_shift=0, brightness=0)
    corner = torch.zeros(4000, 2, 2, 3, dtype=torch.uint8)
    corner[:, 0, 0] = 200  # where the top-left pixel lands identifies the transform's class
    out = plain(corner, torch.Generator().manual_seed(0))
    landed = (out[..., 0] > 100).flatten(1).float().argmax(dim=1)
    counts = torch.bincount(landed, minlength=4)  # 4 corners, 2 transforms each
    assert (counts - 1000).abs().max() < 120, counts


def test_non_square_patches_keep_their_shape():
    images = torch.randint(0, 256, (16, 6, 10, 3), dtype=torch.uint8)
    out = Augmentation(stain_scale=0, stain_shift=0, brightness=0)(
        images, torch.Generator().manual_seed(0)
    )
    assert out.shape == images.shape
    flips = [t.apply(images.permute(0, 3, 1, 2)) for t in D4_GROUP if t.k % 2 == 0]
    for k in range(len(images)):
        got = out[k].permute(2, 0, 1).int()
        assert min((f[k].int() - got).abs().max().item() for f in flips) <= 1
