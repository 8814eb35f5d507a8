"""Uploads are capped by the bytes they decode to (mode × size, read from the header), not only
by pixels: a small float or 16-bit file that would decode to GBs is refused before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import forged_png, forged_tiff
from PIL import Image

from core.uploads import UploadError, load_upload

DEEP_FILES = {
    "float32-tiff-8000": lambda: forged_tiff(8000, 8000, bits=32, sample_format=3),
    "float32-tiff-5000": lambda: forged_tiff(5000, 5000, bits=32, sample_format=3),
    "16bit-grey-png-6000": lambda: forged_png(6000, 6000, depth=16, colour=0),
    "16bit-grey-tiff-6000": lambda: forged_tiff(6000, 6000, bits=16),
    "rgba-png-7000": lambda: forged_png(7000, 7000, colour=6),
}


@pytest.mark.parametrize("case", sorted(DEEP_FILES))
def test_small_file_that_decodes_huge_is_refused_from_its_header(case):
    data = DEEP_FILES[case]()
    assert len(data) < 2000
    with pytest.raises(UploadError, match="to decode") as err:
        load_upload(f"{case}.bin", data, size=96)
    assert "\n" not in str(err.value) and case in str(err.value)


def test_same_size_in_8_bit_rgb_is_still_accepted_by_the_decoded_cap():
    """The decoded cap is the pixel cap expressed in RGB bytes: 8-bit RGB keeps its full budget,
    and a real 16-bit patch is still converted."""
    small = io.BytesIO()
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(small, format="PNG")
    assert load_upload("ok.png", small.getvalue(), size=64).image.shape == (64, 64, 3)
