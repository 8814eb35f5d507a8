"""Reading single patch files (TIFF, PNG) with Pillow, with one-line errors naming the file."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.data.base import DatasetError, to_rgb_uint8

EIGHT_BIT_MODES = {"RGB": "RGB", "RGBA": "RGB", "L": "RGB", "P": "RGB", "CMYK": "RGB"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(path: Path) -> np.ndarray:
    """uint8 H×W×3 RGB; a corrupt, truncated or non-8-bit file is a DatasetError."""
    try:
        # One read of the whole (small) file: Pillow's TIFF parser otherwise issues ~40 tiny
        # reads per file, which dominate a gallery page.
        with Image.open(io.BytesIO(Path(path).read_bytes())) as image:
            if image.mode not in EIGHT_BIT_MODES:
                raise DatasetError(f"{path}: mode {image.mode}, expected 8-bit RGB; re-export it.")
            array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file missing; restore it or re-index the dataset.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(
            f"{path}: unreadable image ({err.__class__.__name__}: truncated or corrupt); "
            "replace the file."
        ) from None
    return to_rgb_uint8(array, path)


def image_size_of(path: Path) -> tuple[int, int]:
    """(h, w) from the header only."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{path}: unreadable image ({err.__class__.__name__}).") from None


def png_size(path: str) -> tuple[int, int] | None:
    """(h, w) from a PNG's IHDR chunk, or None when the file is not a PNG.

    Reads 24 bytes instead of letting Pillow parse the file: indexing 277k IDC files is dominated
    by per-file cost, and the header is all the index needs (pixels are checked when read).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width
