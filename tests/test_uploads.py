"""Upload safety: type by content, byte and pixel caps, mode conversions, resize notice."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.uploads import UploadError, load_upload


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _patch(h=96, w=96, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_lossless_rgb_patch_round_trips_exactly(fmt):
    pixels = _patch()
    up = load_upload(f"p.{fmt.lower()}", _encode(Image.fromarray(pixels), fmt), size=96)
    assert up.image.dtype == np.uint8 and up.image.shape == (96, 96, 3)
    np.testing.assert_array_equal(up.image, pixels)
    assert up.notice is None


def test_type_is_sniffed_from_content_not_extension():
    pixels = _patch()
    png_named_jpg = load_upload("looks_like.jpg", _encode(Image.fromarray(pixels), "PNG"), size=96)
    np.testing.assert_array_equal(png_named_jpg.image, pixels)
    with pytest.raises(UploadError, match="not an image"):
        load_upload("evil.png", b"#!/bin/sh\nrm -rf /\n" * 10, size=96)


def test_disallowed_image_format_is_refused():
    data = _encode(Image.fromarray(_patch()), "BMP")
    with pytest.raises(UploadError, match="BMP content is not supported"):
        load_upload("x.png", data, size=96)


def test_truncated_png_gives_a_clear_error():
    data = _encode(Image.fromarray(_patch()), "PNG")
    with pytest.raises(UploadError, match=r"broken\.png: (corrupt|not an image)"):
        load_upload("broken.png", data[: len(data) // 2], size=96)


def test_empty_and_oversized_files_are_refused():
    with pytest.raises(UploadError, match="empty"):
        load_upload("e.png", b"", size=96)
    data = _encode(Image.fromarray(_patch()), "PNG")
    with pytest.raises(UploadError, match="over the"):
        load_upload("big.png", data, size=96, max_bytes=len(data) - 1)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that *declares* width×height 8-bit RGB (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_header_only(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(UploadError, match="decompression bomb"):
        load_upload("bomb.png", bomb, size=96)


def test_explicit_pixel_cap():
    data = _encode(Image.fromarray(_patch(200, 200)), "PNG")
    with pytest.raises(UploadError, match="pixel limit"):
        load_upload("p.png", data, size=96, max_pixels=100 * 100)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[..., 0] = 200  # red where opaque
    rgba[:48, :, 3] = 255  # top half opaque, bottom half transparent
    up = load_upload("a.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), size=96)
    assert up.original_mode == "RGBA"
    np.testing.assert_array_equal(up.image[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(up.image[-1, -1], [255, 255, 255])


def test_grayscale_and_palette_become_rgb():
    grey = np.arange(96 * 96, dtype=np.uint32).reshape(96, 96) % 256
    up = load_upload("g.png", _encode(Image.fromarray(grey.astype(np.uint8), "L"), "PNG"), size=96)
    assert up.image.shape == (96, 96, 3)
    np.testing.assert_array_equal(up.image[..., 0], grey)
    np.testing.assert_array_equal(up.image[..., 2], grey)
    palette = Image.fromarray(_patch()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    up = load_upload("p.png", _encode(palette, "PNG"), size=96)
    np.testing.assert_array_equal(up.image, np.asarray(palette.convert("RGB")))


def test_sixteen_bit_grey_is_scaled_to_eight_bit():
    values = np.linspace(0, 65535, 96 * 96).astype(np.uint16).reshape(96, 96)
    image = Image.fromarray(values)  # mode I;16
    up = load_upload("deep.png", _encode(image, "PNG"), size=96)
    assert up.image.dtype == np.uint8
    assert up.image[0, 0, 0] == 0 and up.image[-1, -1, 0] == 255
    np.testing.assert_allclose(up.image[..., 1].astype(float), values / 257.0, atol=0.51)


def test_jpeg_is_accepted():
    up = load_upload("p.jpeg", _encode(Image.fromarray(_patch()), "JPEG", quality=95), size=96)
    assert up.image.shape == (96, 96, 3)


def test_other_sizes_are_cropped_and_resized_with_a_notice():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the centre square is white, the sides black
    up = load_upload("wide.png", _encode(Image.fromarray(wide), "PNG"), size=96)
    assert up.image.shape == (96, 96, 3)
    assert up.original_size == (100, 300)
    assert up.image.min() >= 250  # only the centre square survived
    assert "300×100" in up.notice and "96×96" in up.notice and "centre-cropped" in up.notice
    small = load_upload("s.png", _encode(Image.fromarray(_patch(50, 50)), "PNG"), size=96)
    assert small.image.shape == (96, 96, 3) and "resized" in small.notice
    assert "centre-cropped" not in small.notice
