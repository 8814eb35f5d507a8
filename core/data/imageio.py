"""Reading single patch files (TIFF, PNG) with Pillow, with one-line errors naming the file.

A file is judged before it is decoded: it must be a regular file (never a FIFO) of at most
``MAX_PATCH_FILE_BYTES``, and its header must claim at most ``MAX_PATCH_SIDE`` pixels a side, so
a small file that claims 60000×60000 never allocates anything.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.base import (
    DatasetError,
    check_side,
    read_regular_bytes,
    to_rgb_uint8,
)

EIGHT_BIT_MODES = {"RGB": "RGB", "RGBA": "RGB", "L": "RGB", "P": "RGB", "CMYK": "RGB"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _open(path: Path, data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise DatasetError(
            f"{path}: claims a huge image (decompression bomb); a patch is at most "
            "1024 px a side, replace the file."
        ) from None
    except Exception as err:  # UnidentifiedImageError, SyntaxError, struct.error, ...
        raise DatasetError(
            f"{path}: unreadable image ({type(err).__name__}: truncated or corrupt); "
            "replace the file."
        ) from None
    check_side((image.height, image.width), path)
    return image


def read_image(path: Path) -> np.ndarray:
    """uint8 H×W×3 RGB; a corrupt, truncated, oversized or non-8-bit file is a DatasetError."""
    # One read of the whole (small) file: Pillow's TIFF parser otherwise issues ~40 tiny
    # reads per file, which dominate a gallery page.
    with _open(path, read_regular_bytes(path)) as image:
        if image.mode not in EIGHT_BIT_MODES:
            raise DatasetError(f"{path}: mode {image.mode}, expected 8-bit RGB; re-export it.")
        try:
            array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except Exception as err:  # decoding the pixels: truncated data, broken tiles, ...
            raise DatasetError(
                f"{path}: unreadable image ({type(err).__name__}: truncated or corrupt); "
                "replace the file."
            ) from None
    return to_rgb_uint8(array, path)


def image_size_of(path: Path) -> tuple[int, int]:
    """(h, w) from the header only (1..MAX_PATCH_SIDE each, else a DatasetError)."""
    with _open(path, read_regular_bytes(path)) as image:
        return image.height, image.width


def png_size(path: str) -> tuple[int, int] | None:
    """(h, w) from a PNG's IHDR chunk, or None when the file is not a PNG.

    Reads 24 bytes instead of letting Pillow parse the file: indexing 277k IDC files is dominated
    by per-file cost, and the header is all the index needs (pixels are checked when read).
    Callers pass regular files only (``base.regular_files``): opening a FIFO would block.
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
