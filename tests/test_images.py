"""Reading and decoding images: every broken file becomes its named reject reason.

Every image here is made by the test with PIL, in tmp_path; nothing is mocked.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.images import (
    IMAGE_EMPTY,
    IMAGE_NOT_FOUND,
    IMAGE_TOO_LARGE,
    IMAGE_TRUNCATED,
    IMAGE_UNDECODABLE,
    ImageRejected,
    content_hash,
    decode_rgb,
    read_bytes,
)

MAX_BYTES = 1_000_000
MAX_PIXELS = 10_000_000
EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    # Noise, not a flat colour: a JPEG of it is large enough to cut in half meaningfully.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _rejected(excinfo: pytest.ExceptionInfo[ImageRejected]) -> tuple[str, str]:
    return excinfo.value.reason, excinfo.value.detail


def _close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# --- read_bytes ----------------------------------------------------------------------------


def test_read_bytes_returns_the_file_bytes(tmp_path):
    data = _encode(_noise(32, 24), "PNG")
    assert read_bytes(_write(tmp_path / "a.png", data), MAX_BYTES) == data


def test_missing_file_is_image_not_found(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(missing, MAX_BYTES)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_NOT_FOUND
    assert missing in detail


def test_directory_is_image_not_found(tmp_path):
    folder = tmp_path / "photo.jpg"
    folder.mkdir()
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(str(folder), MAX_BYTES)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_NOT_FOUND
    assert "directory" in detail


def test_empty_file_is_image_empty(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(_write(tmp_path / "empty.jpg", b""), MAX_BYTES)
    assert excinfo.value.reason == IMAGE_EMPTY


def test_file_over_max_bytes_is_image_too_large(tmp_path):
    data = _encode(_noise(64, 64), "PNG")
    uri = _write(tmp_path / "big.png", data)
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(uri, max_bytes=len(data) - 1)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_TOO_LARGE
    assert str(len(data) - 1) in detail
    # Exactly at the limit is allowed: the limit is inclusive.
    assert read_bytes(uri, max_bytes=len(data)) == data


def test_rejection_message_carries_reason_and_detail(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(_write(tmp_path / "empty.jpg", b""), MAX_BYTES)
    assert str(excinfo.value) == f"{IMAGE_EMPTY}: {excinfo.value.detail}"


def test_file_uri_reads_like_a_path(tmp_path):
    data = _encode(_noise(16, 16), "JPEG")
    path = _write(tmp_path / "a.jpg", data)
    assert read_bytes(f"file://{path}", MAX_BYTES) == data
    assert decode_rgb(read_bytes(f"file://{path}", MAX_BYTES), MAX_PIXELS).size == (16, 16)


def test_file_uri_of_missing_file_is_image_not_found(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(f"file://{tmp_path / 'nope.jpg'}", MAX_BYTES)
    assert excinfo.value.reason == IMAGE_NOT_FOUND


def test_file_uri_of_directory_is_image_not_found(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(f"file://{tmp_path}", MAX_BYTES)
    assert excinfo.value.reason == IMAGE_NOT_FOUND


def test_file_uri_of_empty_file_is_image_empty(tmp_path):
    path = _write(tmp_path / "empty.jpg", b"")
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(f"file://{path}", MAX_BYTES)
    assert excinfo.value.reason == IMAGE_EMPTY


def test_percent_encoded_file_uri_reads_the_file(tmp_path):
    data = _encode(_noise(16, 16), "JPEG")
    path = tmp_path / "front view.jpg"
    path.write_bytes(data)
    assert "%20" in path.as_uri()
    assert read_bytes(path.as_uri(), MAX_BYTES) == data


# --- decode_rgb: rejects ---------------------------------------------------------------------


def test_jpeg_cut_in_half_is_image_truncated(tmp_path):
    data = _encode(_noise(96, 64), "JPEG", quality=90)
    half = read_bytes(_write(tmp_path / "half.jpg", data[: len(data) // 2]), MAX_BYTES)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(half, MAX_PIXELS)
    assert excinfo.value.reason == IMAGE_TRUNCATED


def test_text_file_named_jpg_is_image_undecodable(tmp_path):
    data = read_bytes(_write(tmp_path / "photo.jpg", b"<html>404 Not Found</html>\n"), MAX_BYTES)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, MAX_PIXELS)
    assert excinfo.value.reason == IMAGE_UNDECODABLE


def test_pixels_over_max_pixels_is_image_too_large_with_the_count():
    data = _encode(Image.new("RGB", (120, 80), "red"), "PNG")
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, max_pixels=120 * 80 - 1)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_TOO_LARGE
    assert "120x80" in detail
    assert str(120 * 80 - 1) in detail
    # Exactly at the limit is allowed.
    assert decode_rgb(data, max_pixels=120 * 80).size == (120, 80)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one row of pixel data: a bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    # 1-bit greyscale, so a row is width / 8 bytes (plus its filter byte).
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\x00" * ((width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def png_20000_square() -> bytes:
    data = _png_header_only(20_000, 20_000)
    assert len(data) < 1_000
    # PIL reads it as a real 400 Mpx PNG (its header is valid).
    assert Image.open(io.BytesIO(data)).size == (20_000, 20_000)
    return data


def test_20000_square_png_header_is_image_too_large(png_20000_square):
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(png_20000_square, MAX_PIXELS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_TOO_LARGE
    assert "20000x20000" in detail


def test_header_over_max_pixels_is_rejected_before_decoding():
    # 9000x9000 is under PIL's own limits; the file holds one row of pixels, so only a check of
    # the header (not a decode, which would say truncated) can answer image_too_large.
    data = _png_header_only(9_000, 9_000)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, max_pixels=64_000_000)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_TOO_LARGE
    assert "9000x9000" in detail
    assert "64000000" in detail


# --- decode_rgb: conversions -----------------------------------------------------------------


def test_rgba_transparent_background_becomes_white():
    image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (5, 2, 10, 8))
    decoded = decode_rgb(_encode(image, "PNG"), MAX_PIXELS)
    assert decoded.mode == "RGB"
    assert decoded.size == (20, 10)
    assert decoded.getpixel((0, 0)) == WHITE
    assert decoded.getpixel((7, 5)) == (0, 0, 255)


def test_rgba_half_transparent_pixel_is_blended_onto_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    pixel = decode_rgb(_encode(image, "PNG"), MAX_PIXELS).getpixel((1, 1))
    assert _close(pixel, (127, 127, 127), tolerance=1)


def test_greyscale_with_alpha_becomes_white_where_transparent():
    image = Image.new("LA", (8, 8), (0, 0))
    image.putpixel((3, 3), (50, 255))
    decoded = decode_rgb(_encode(image, "PNG"), MAX_PIXELS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == WHITE
    assert decoded.getpixel((3, 3)) == (50, 50, 50)


def test_palette_png_with_transparency_becomes_white_there():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((4, 4), 1)
    data = _encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"  # the file really is a palette PNG
    decoded = decode_rgb(data, MAX_PIXELS)
    assert decoded.mode == "RGB"
    # Palette entry 0 is black but transparent: white, not black.
    assert decoded.getpixel((0, 0)) == WHITE
    assert decoded.getpixel((4, 4)) == (255, 0, 0)


def test_palette_png_without_transparency_keeps_its_colours():
    image = Image.new("P", (6, 6), 0)
    image.putpalette([0, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 6))
    image.putpixel((2, 2), 1)
    decoded = decode_rgb(_encode(image, "PNG"), MAX_PIXELS)
    assert decoded.getpixel((0, 0)) == (0, 0, 0)
    assert decoded.getpixel((2, 2)) == (0, 128, 0)


def test_greyscale_jpeg_decodes_to_rgb():
    data = _encode(Image.new("L", (30, 20), 200), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "L"
    decoded = decode_rgb(data, MAX_PIXELS)
    assert decoded.mode == "RGB"
    assert decoded.size == (30, 20)
    assert _close(decoded.getpixel((10, 10)), (200, 200, 200), tolerance=2)


def test_cmyk_jpeg_decodes_to_rgb_colours():
    # Cyan 0, magenta 100 %, yellow 100 %, black 0: red.
    data = _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_rgb(data, MAX_PIXELS)
    assert decoded.mode == "RGB"
    assert _close(decoded.getpixel((8, 8)), (255, 0, 0))


def test_exif_orientation_6_is_turned_upright():
    # Stored landscape 60x40, left half red and right half blue; orientation 6 says
    # "rotate 90 degrees clockwise to display".
    image = Image.new("RGB", (60, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 30, 40))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    data = _encode(image, "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_rgb(data, MAX_PIXELS)
    assert decoded.size == (40, 60)
    # Turned clockwise, the stored left half (red) is now on top.
    assert _close(decoded.getpixel((20, 5)), (255, 0, 0), tolerance=30)
    assert _close(decoded.getpixel((20, 55)), (0, 0, 255), tolerance=30)


def test_exif_orientation_1_is_left_as_stored():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 1
    data = _encode(Image.new("RGB", (60, 40), "red"), "JPEG", exif=exif.tobytes())
    assert decode_rgb(data, MAX_PIXELS).size == (60, 40)


# --- content_hash ----------------------------------------------------------------------------


def test_content_hash_equal_for_identical_bytes(tmp_path):
    data = _encode(_noise(40, 30), "JPEG", quality=90)
    copy_a = read_bytes(_write(tmp_path / "a.jpg", data), MAX_BYTES)
    copy_b = read_bytes(_write(tmp_path / "b.jpg", data), MAX_BYTES)
    assert content_hash(copy_a) == content_hash(copy_b)
    assert len(content_hash(copy_a)) == 64  # sha256, hex
    assert int(content_hash(copy_a), 16) >= 0


def test_content_hash_differs_for_a_re_encoded_copy():
    image = _noise(40, 30)
    original = _encode(image, "JPEG", quality=90)
    re_encoded = _encode(decode_rgb(original, MAX_PIXELS), "JPEG", quality=80)
    assert original != re_encoded
    assert content_hash(original) != content_hash(re_encoded)


def test_content_hash_differs_for_one_changed_byte():
    data = bytearray(_encode(_noise(8, 8), "PNG"))
    original = content_hash(bytes(data))
    data[-20] ^= 0x01
    assert content_hash(bytes(data)) != original
