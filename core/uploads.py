"""User uploads -> uint8 RGB patches the models can read, refusing what is unsafe or unreadable.

An upload is judged by its content, never by its file name: Pillow sniffs the format from the
header bytes, ``verify()`` checks the structure, and a full decode catches truncation. Before any
pixel is decoded we refuse files above a byte cap and images above a pixel cap (a small PNG can
declare 100k×100k pixels and expand to tens of GB: a decompression bomb).

Conversions (documented because they change pixels):
- 16-bit grey (``I;16*`` / ``I``) -> 8 bit by dividing by 257 (full 16-bit range to full 8-bit).
- float (``F``) -> 8 bit by stretching its own min..max to 0..255.
- anything with transparency (RGBA, LA, P with a transparent index) -> composited on white, the
  colour of an empty slide.
- grey, palette, CMYK, YCbCr -> RGB through Pillow.
- a size other than the model's input -> centre-cropped to a square (so tissue is not squashed)
  and resized, with a notice the UI must show.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core import config
from core.errors import InputError

ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a patch is KBs; a 20 MB cap still admits large tiles
MAX_UPLOAD_PIXELS = 64_000_000  # 8000×8000; decoded RGB ≈ 192 MB, the most we accept in memory
PUBLIC_MAX_UPLOAD_PIXELS = 16_000_000  # public mode: 4000×4000, a quarter of the memory per file
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Peak bytes per pixel to decode a mode and convert it to uint8 RGB here: the decoded image, the
# float64 working copies of 16-bit and float modes, the RGB result. Uploads are capped on this,
# read from the header, so a small file cannot decode huge (an 8000×8000 float TIFF of 384 KB).
WORK_BYTES_PER_PIXEL = {"1": 4, "L": 4, "P": 4, "RGB": 6, "YCbCr": 6, "CMYK": 7, "LAB": 6}
WORK_BYTES_PER_PIXEL |= dict.fromkeys(("RGBA", "LA", "PA", "RGBa", "La"), 15)
WORK_BYTES_PER_PIXEL |= dict.fromkeys(SIXTEEN_BIT_MODES[:4], 21)
OTHER_MODE_WORK_BYTES = 23  # "I", "F" and anything rarer: 4-byte pixels + float64 copies


class UploadError(InputError):
    """An upload we cannot use; the message names the file and what to do instead."""


@dataclass(frozen=True)
class UploadedPatch:
    name: str
    image: np.ndarray  # uint8 H×W×3 RGB at the requested size
    original_size: tuple[int, int]  # (h, w) as uploaded
    original_mode: str  # Pillow mode as uploaded, e.g. "RGBA", "I;16"
    notice: str | None  # shown next to the patch when pixels were resized or cropped


def load_upload(
    name: str,
    data: bytes,
    size: int,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
) -> UploadedPatch:
    """Validate and decode one uploaded file into a ``size``×``size`` uint8 RGB patch.
    ``max_pixels`` defaults to 64 MP, 16 MP in public mode."""
    if max_pixels is None:
        max_pixels = PUBLIC_MAX_UPLOAD_PIXELS if config.public_mode() else MAX_UPLOAD_PIXELS
    if len(data) == 0:
        raise UploadError(f"{name}: the file is empty; upload a PNG, JPEG or TIFF patch")
    if len(data) > max_bytes:
        raise UploadError(
            f"{name}: {len(data) / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit; "
            "upload a single patch or a cropped tile"
        )
    image = _open_checked(name, data, max_pixels)
    mode = image.mode
    rgb = _to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    patch, notice = _fit_to_size(rgb, size)
    return UploadedPatch(
        name=name, image=patch, original_size=(h, w), original_mode=mode, notice=notice
    )


def _open_checked(name: str, data: bytes, max_pixels: int) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
            _check_format_and_pixels(name, fmt, w, h, max_pixels)
            _check_decoded_bytes(name, probe.mode, w, h, max_pixels)
            probe.verify()  # structure and checksums, without decoding pixels
        image = Image.open(io.BytesIO(data))  # verify() leaves the image unusable: reopen
        image.load()  # full decode: catches truncated pixel data
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(
            f"{name}: image declares too many pixels (decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise UploadError(
            f"{name}: not an image Pillow can read; upload a PNG, JPEG or TIFF patch"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadError(
            f"{name}: corrupt or truncated image ({exc}); re-export it and upload again"
        ) from None
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # multi-page TIFF: explain the first page
    return ImageOps.exif_transpose(image)


def _check_format_and_pixels(name: str, fmt: str | None, w: int, h: int, max_pixels: int) -> None:
    if fmt not in ALLOWED_FORMATS:
        raise UploadError(
            f"{name}: {fmt or 'unknown'} content is not supported; upload PNG, JPEG or TIFF"
        )
    if w * h > max_pixels:
        raise UploadError(
            f"{name}: {w}×{h} pixels is over the {max_pixels:,} pixel limit (decompression bomb guard); "
            "crop a patch first"
        )
    if w == 0 or h == 0:
        raise UploadError(f"{name}: image has no pixels")


def _check_decoded_bytes(name: str, mode: str, w: int, h: int, max_pixels: int) -> None:
    """The pixel cap admits that many 8-bit RGB pixels; deeper modes get fewer (header only)."""
    limit = max_pixels * WORK_BYTES_PER_PIXEL["RGB"]
    need = w * h * WORK_BYTES_PER_PIXEL.get(mode, OTHER_MODE_WORK_BYTES)
    if need > limit:
        raise UploadError(
            f"{name}: {w}×{h} pixels in mode {mode} would take ~{need / 1e6:,.0f} MB to decode "
            f"(limit {limit / 1e6:,.0f} MB); crop a patch or export it as 8-bit RGB"
        )


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return np.repeat(np.clip(grey, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        span = values.max() - values.min()
        grey = (values - values.min()) / span * 255 if span > 0 else np.zeros_like(values)
        return np.repeat(grey.round().astype(np.uint8)[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _fit_to_size(rgb: np.ndarray, size: int) -> tuple[np.ndarray, str | None]:
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb, None
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top : top + side, left : left + side]
    resized = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))
    cropped = f"centre-cropped to {side}×{side} and " if side != max(h, w) else ""
    return resized, f"{w}×{h} px upload {cropped}resized to the model's {size}×{size} input"
