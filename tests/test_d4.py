import numpy as np
import pytest
import torch

from core.d4 import D4_GROUP


def test_d4_has_eight_distinct_transforms():
    x = np.arange(9).reshape(3, 3)
    images = {t.apply(x).tobytes() for t in D4_GROUP}
    assert len(images) == 8


@pytest.mark.parametrize("t", D4_GROUP, ids=lambda t: f"k{t.k}{'f' if t.flip else ''}")
def test_invert_undoes_apply_for_numpy_and_torch(t):
    x = np.random.default_rng(0).random((2, 3, 4, 4))
    np.testing.assert_array_equal(t.invert(t.apply(x)), x)
    xt = torch.from_numpy(x)
    assert torch.equal(t.invert(t.apply(xt)), xt)
    np.testing.assert_array_equal(t.apply(xt).numpy(), t.apply(x))


def test_quarter_turn_is_counter_clockwise_and_flip_is_horizontal():
    img = np.zeros((1, 5, 5))
    img[0, 0, 4] = 1  # top-right corner
    quarter = next(t for t in D4_GROUP if t.k == 1 and not t.flip)
    assert quarter.apply(img)[0, 0, 0] == 1  # -> top-left
    mirror = next(t for t in D4_GROUP if t.k == 0 and t.flip)
    assert mirror.apply(img)[0, 0, 0] == 1  # -> top-left by a left-right flip
    assert mirror.apply(img)[0, 4, 4] == 0
