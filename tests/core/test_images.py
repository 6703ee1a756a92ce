"""Reading and decoding images: every broken file becomes its named reject reason.

Every image here is made by the test with PIL, in tmp_path; nothing is mocked.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from lookalike.core.images import (
    IMAGE_CORRUPT,
    IMAGE_DECOMPRESSION_BOMB,
    IMAGE_EMPTY,
    IMAGE_NOT_AN_IMAGE,
    IMAGE_NOT_FOUND,
    IMAGE_OUTSIDE_ROOTS,
    IMAGE_TOO_LARGE,
    IMAGE_TRUNCATED,
    IMAGE_UNREADABLE,
    IMAGE_UNSUPPORTED_FORMAT,
    ImageLimits,
    ImageRejected,
    content_hash,
    decode_rgb,
    image_version,
    read_bytes,
    trim_uniform_border,
)
from lookalike.stages import ingest

MAX_BYTES = 1_000_000
MAX_PIXELS = 10_000_000
LIMITS = ImageLimits(max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
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
    assert read_bytes(_write(tmp_path / "a.png", data), LIMITS) == data


def test_missing_file_is_image_not_found(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(missing, LIMITS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_NOT_FOUND
    assert missing in detail


def test_directory_is_image_not_found(tmp_path):
    folder = tmp_path / "photo.jpg"
    folder.mkdir()
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(str(folder), LIMITS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_NOT_FOUND
    assert "directory" in detail


def test_empty_file_is_image_empty(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(_write(tmp_path / "empty.jpg", b""), LIMITS)
    assert excinfo.value.reason == IMAGE_EMPTY


def test_file_over_max_bytes_is_image_too_large(tmp_path):
    data = _encode(_noise(64, 64), "PNG")
    uri = _write(tmp_path / "big.png", data)
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(uri, ImageLimits(max_bytes=len(data) - 1, max_pixels=MAX_PIXELS))
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_TOO_LARGE
    assert str(len(data) - 1) in detail
    # Exactly at the limit is allowed: the limit is inclusive.
    assert read_bytes(uri, ImageLimits(max_bytes=len(data), max_pixels=MAX_PIXELS)) == data


def test_rejection_message_carries_reason_and_detail(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(_write(tmp_path / "empty.jpg", b""), LIMITS)
    assert str(excinfo.value) == f"{IMAGE_EMPTY}: {excinfo.value.detail}"


def test_file_uri_reads_like_a_path(tmp_path):
    data = _encode(_noise(16, 16), "JPEG")
    path = _write(tmp_path / "a.jpg", data)
    assert read_bytes(f"file://{path}", LIMITS) == data
    assert decode_rgb(read_bytes(f"file://{path}", LIMITS), MAX_PIXELS).size == (16, 16)


def test_file_uri_of_missing_file_is_image_not_found(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(f"file://{tmp_path / 'nope.jpg'}", LIMITS)
    assert excinfo.value.reason == IMAGE_NOT_FOUND


def test_file_uri_of_directory_is_image_not_found(tmp_path):
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(f"file://{tmp_path}", LIMITS)
    assert excinfo.value.reason == IMAGE_NOT_FOUND


def test_file_uri_of_empty_file_is_image_empty(tmp_path):
    path = _write(tmp_path / "empty.jpg", b"")
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(f"file://{path}", LIMITS)
    assert excinfo.value.reason == IMAGE_EMPTY


def test_percent_encoded_file_uri_reads_the_file(tmp_path):
    data = _encode(_noise(16, 16), "JPEG")
    path = tmp_path / "front view.jpg"
    path.write_bytes(data)
    assert "%20" in path.as_uri()
    assert read_bytes(path.as_uri(), LIMITS) == data


def test_fifo_is_image_unreadable_without_hanging(tmp_path):
    # Opening a FIFO for reading blocks until a writer comes, which would hang the task.
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(str(fifo), LIMITS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_UNREADABLE
    assert "regular file" in detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_file_without_read_permission_is_image_unreadable(tmp_path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(_encode(_noise(8, 8), "JPEG"))
    path.chmod(0)
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(str(path), LIMITS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_UNREADABLE
    assert "Permission" in detail


def test_image_limits_take_roots_as_a_tuple():
    limits = ImageLimits(MAX_BYTES, MAX_PIXELS, roots=["/data/images"])  # as from a config file
    assert limits.roots == ("/data/images",)
    hash(limits)
    with pytest.raises(TypeError, match="roots"):
        ImageLimits(MAX_BYTES, MAX_PIXELS, roots="/data/images")
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(0, MAX_PIXELS)


# --- read_bytes: image roots -----------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    return root


def _rooted(root: Path | str) -> ImageLimits:
    return ImageLimits(MAX_BYTES, MAX_PIXELS, roots=(str(root),))


def test_outside_roots_is_the_same_code_as_at_ingest():
    assert IMAGE_OUTSIDE_ROOTS == ingest.IMAGE_OUTSIDE_ROOTS == "image_outside_roots"


def test_file_inside_a_root_is_read(image_root):
    data = _encode(_noise(8, 8), "PNG")
    path = _write(image_root / "a.png", data)
    assert read_bytes(path, _rooted(image_root)) == data
    assert read_bytes(Path(path).as_uri(), _rooted(image_root.as_uri())) == data


def test_file_outside_the_roots_is_image_outside_roots(tmp_path, image_root):
    path = _write(tmp_path / "elsewhere.png", _encode(_noise(8, 8), "PNG"))
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(path, _rooted(image_root))
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_OUTSIDE_ROOTS
    assert str(image_root) in detail


def test_sibling_folder_sharing_the_root_prefix_is_outside(tmp_path, image_root):
    sibling = tmp_path / "images-private"
    sibling.mkdir()
    path = _write(sibling / "a.png", _encode(_noise(8, 8), "PNG"))
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(path, _rooted(image_root))
    assert excinfo.value.reason == IMAGE_OUTSIDE_ROOTS


def test_dot_dot_out_of_a_root_is_image_outside_roots(tmp_path, image_root):
    _write(tmp_path / "secret.png", _encode(_noise(8, 8), "PNG"))
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(f"{image_root}/../secret.png", _rooted(image_root))
    assert excinfo.value.reason == IMAGE_OUTSIDE_ROOTS


def test_symlink_inside_a_root_to_etc_passwd_is_image_outside_roots(image_root):
    link = image_root / "photo.jpg"
    link.symlink_to("/etc/passwd")
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(str(link), _rooted(image_root))
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_OUTSIDE_ROOTS
    assert "/etc/passwd" in detail  # names where the link really leads
    # Without roots the same link is read, so it is the roots check that refused it.
    assert read_bytes(str(link), LIMITS) == Path("/etc/passwd").read_bytes()


def test_symlink_out_of_a_root_is_refused_before_reading(tmp_path, image_root):
    # The target does not exist: a read would say image_not_found, the check comes first.
    link = image_root / "photo.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes(str(link), _rooted(image_root))
    assert excinfo.value.reason == IMAGE_OUTSIDE_ROOTS


def test_symlink_within_a_root_and_a_symlinked_root_are_inside(tmp_path, image_root):
    data = _encode(_noise(8, 8), "PNG")
    _write(image_root / "a.png", data)
    (image_root / "same.png").symlink_to(image_root / "a.png")
    assert read_bytes(str(image_root / "same.png"), _rooted(image_root)) == data
    # A root configured through a link (/data -> /mnt/disk1/data) holds its files.
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(image_root)
    assert read_bytes(str(linked_root / "a.png"), _rooted(linked_root)) == data
    assert read_bytes(str(image_root / "a.png"), _rooted(linked_root)) == data


def test_remote_uri_outside_the_remote_roots_is_refused_without_a_request(image_root):
    # No network here: a request to S3 would fail differently (or hang), not with this reason.
    limits = ImageLimits(MAX_BYTES, MAX_PIXELS, roots=(str(image_root), "s3://shop/images"))
    for uri in (
        "s3://other-bucket/images/a.jpg",
        "s3://shop/images-private/a.jpg",
        "s3://shop/images/../private/a.jpg",
        "gs://shop/images/a.jpg",
    ):
        with pytest.raises(ImageRejected) as excinfo:
            read_bytes(uri, limits)
        assert excinfo.value.reason == IMAGE_OUTSIDE_ROOTS, uri
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes("s3://shop/images/a.jpg", _rooted(image_root))  # only a local root
    assert excinfo.value.reason == IMAGE_OUTSIDE_ROOTS


def test_remote_uri_inside_a_remote_root_is_looked_up():
    # pyarrow's in-memory "mock" filesystem stands in for object storage: empty, so the
    # object is not found, which shows the roots check let the URI through.
    limits = ImageLimits(MAX_BYTES, MAX_PIXELS, roots=("mock:///images",))
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes("mock:///images/a.jpg", limits)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_NOT_FOUND
    assert "mock:///images/a.jpg" in detail


def test_uri_of_an_unknown_filesystem_is_image_unreadable():
    with pytest.raises(ImageRejected) as excinfo:
        read_bytes("nosuchfs://bucket/a.jpg", LIMITS)
    assert excinfo.value.reason == IMAGE_UNREADABLE


# --- decode_rgb: rejects ---------------------------------------------------------------------


def test_jpeg_cut_in_half_is_image_truncated(tmp_path):
    data = _encode(_noise(96, 64), "JPEG", quality=90)
    half = read_bytes(_write(tmp_path / "half.jpg", data[: len(data) // 2]), LIMITS)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(half, MAX_PIXELS)
    assert excinfo.value.reason == IMAGE_TRUNCATED


def test_html_error_page_named_jpg_is_image_not_an_image(tmp_path):
    data = read_bytes(_write(tmp_path / "photo.jpg", b"<html>404 Not Found</html>\n"), LIMITS)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, MAX_PIXELS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_NOT_AN_IMAGE
    assert "HTML" in detail


def _jpeg_with_garbage_scan(seed: int = 0) -> bytes:
    """A JPEG whose headers are intact and whose entropy-coded scan is random bytes.

    libjpeg decodes random scan bytes into (wrong) pixels without complaint; what it cannot
    get past is a marker that breaks the file's structure, so the garbage holds a stray
    start-of-frame marker, as random bytes sometimes do.
    """
    data = _encode(_noise(96, 64), "JPEG", quality=90)
    sos = data.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    garbage = np.random.default_rng(seed).integers(0, 256, 1500, dtype=np.uint8).tobytes()
    garbage = garbage.replace(b"\xff", b"\x00")
    return data[:scan] + garbage[:700] + b"\xff\xc0\x00\x11" + garbage[700:] + b"\xff\xd9"


def test_jpeg_with_garbage_scan_data_is_image_corrupt():
    data = _jpeg_with_garbage_scan()
    assert Image.open(io.BytesIO(data)).size == (96, 64)  # the header reads fine
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, MAX_PIXELS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_CORRUPT
    assert detail.startswith("JPEG")


def test_png_with_garbage_pixel_data_is_image_corrupt():
    data = bytearray(_encode(_noise(64, 64), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 100 : start + 2100] = np.random.default_rng(1).bytes(2000)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(bytes(data), MAX_PIXELS)
    assert excinfo.value.reason == IMAGE_CORRUPT


def test_webp_cut_short_is_image_truncated():
    # Pillow's message for it says nothing of truncation; the RIFF header's length does.
    data = _encode(_noise(96, 64), "WEBP")
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data[: len(data) // 2], MAX_PIXELS)
    assert excinfo.value.reason == IMAGE_TRUNCATED


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_tiff_cut_before_its_directory_is_image_truncated():
    # Compressed TIFFs are written with the directory (the header proper) at the end.
    data = _encode(_noise(96, 64), "TIFF", compression="tiff_deflate")
    assert int.from_bytes(data[4:8], "little") > len(data) // 2
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data[: len(data) // 2], MAX_PIXELS)
    assert excinfo.value.reason == IMAGE_TRUNCATED


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"404 Not Found\nThe image you requested could not be found.\n", "text"),
        (b"<!DOCTYPE html><html><body><svg></svg>Forbidden</body></html>", "HTML"),
        (b"%PDF-1.4\n1 0 obj\n<< >>\nendobj\n", "PDF"),
        (b'{"error": "AccessDenied"}', "JSON"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64), "binary"),
    ],
    ids=["text", "html-page", "pdf", "json", "mp4-video"],
)
def test_data_of_no_image_format_is_image_not_an_image(data, what):
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, MAX_PIXELS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_NOT_AN_IMAGE
    assert what in detail


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + bytes(64)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (_ftyp(b"heic", b"mif1", b"heic"), "HEIC"),
        (_ftyp(b"mif1", b"mif1", b"heic"), "HEIC"),
        (_ftyp(b"avif", b"avif", b"mif1", b"miaf"), "AVIF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>', "SVG"),
        (
            b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- drawn by hand -->\n'
            b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd">\n<svg></svg>',
            "SVG",
        ),
        (b"\xff\x0a\xfa\x7f" + bytes(64), "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(64), "JPEG XL"),
    ],
    ids=["heic", "heif-mif1-heic", "avif", "svg", "svg-xml-doctype", "jxl", "jxl-container"],
)
def test_image_formats_pillow_does_not_decode_are_image_unsupported_format(data, name):
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, MAX_PIXELS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_UNSUPPORTED_FORMAT
    assert detail.startswith(f"{name} ")


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "TGA", "PCX", "PPM", "JPEG2000"])
def test_formats_pillow_knows_but_we_do_not_accept_are_image_unsupported_format(fmt):
    data = _encode(_noise(32, 32), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would open it
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, MAX_PIXELS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_UNSUPPORTED_FORMAT
    assert detail.startswith(f"{fmt} ")


def test_psd_is_image_unsupported_format():
    # Pillow cannot write PSD; this is its 26-byte header and empty sections.
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3)
    data = header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(16 * 16 * 3)
    assert Image.open(io.BytesIO(data)).format == "PSD"
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, MAX_PIXELS)
    assert excinfo.value.reason == IMAGE_UNSUPPORTED_FORMAT
    assert "PSD" in excinfo.value.detail


def test_pixels_over_max_pixels_is_image_decompression_bomb_with_the_count():
    data = _encode(Image.new("RGB", (120, 80), "red"), "PNG")
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, max_pixels=120 * 80 - 1)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_DECOMPRESSION_BOMB
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


def test_20000_square_png_header_is_image_decompression_bomb(png_20000_square):
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(png_20000_square, MAX_PIXELS)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_DECOMPRESSION_BOMB
    assert "20000x20000" in detail


def test_header_over_max_pixels_is_rejected_before_decoding():
    # 9000x9000 is under PIL's own limits; the file holds one row of pixels, so only a check of
    # the header (not a decode, which would say truncated) can answer image_decompression_bomb.
    data = _png_header_only(9_000, 9_000)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, max_pixels=64_000_000)
    reason, detail = _rejected(excinfo)
    assert reason == IMAGE_DECOMPRESSION_BOMB
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


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_exif_orientation_with_broken_exif_keeps_the_image():
    # A broken EXIF block costs the orientation, not the product.
    data = _encode(Image.new("RGB", (60, 40), "red"), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert decode_rgb(data, MAX_PIXELS).size == (60, 40)


def _png_16bit(width: int, height: int, colour_type: int, sample: bytes) -> bytes:
    """A 16-bit PNG (colour type 0: grey, 2: RGB) filled with one sample, written by hand."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + sample * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("value", "expected"), [(0x8000, 128), (0xFFFF, 255), (0x00FF, 0), (0x4123, 0x41)]
)
def test_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(value, expected):
    data = _png_16bit(4, 3, 0, value.to_bytes(2, "big"))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode_rgb(data, MAX_PIXELS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((1, 1)) == (expected,) * 3


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_greyscale_tiff_is_scaled_to_8_bits(tmp_path, mode):
    values = np.full((6, 5), 0x8000, dtype=np.uint16)
    values[0, 0] = 0xFFFF
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        order = ">" if mode == "I;16B" else "<"
        image = Image.frombytes(mode, (5, 6), values.astype(order + "u2").tobytes())
    data = _encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    decoded = decode_rgb(data, MAX_PIXELS)
    assert decoded.getpixel((2, 2)) == (128, 128, 128)
    assert decoded.getpixel((0, 0)) == WHITE


def test_16_bit_rgb_png_keeps_its_colour():
    data = _png_16bit(4, 4, 2, bytes.fromhex("80004000ffff"))
    assert decode_rgb(data, MAX_PIXELS).getpixel((2, 2)) == (128, 64, 255)


def test_float_tiff_in_0_to_1_is_scaled_to_8_bits():
    values = np.full((4, 4), 0.5, dtype=np.float32)
    values[0, 0] = 1.0
    data = _encode(Image.fromarray(values, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    decoded = decode_rgb(data, MAX_PIXELS)
    assert _close(decoded.getpixel((2, 2)), (128, 128, 128), tolerance=1)
    assert decoded.getpixel((0, 0)) == WHITE


def test_cmyk_jpeg_pure_cyan_is_cyan():
    data = _encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert "icc_profile" not in Image.open(io.BytesIO(data)).info
    assert _close(decode_rgb(data, MAX_PIXELS).getpixel((8, 8)), (0, 255, 255))


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _cmyk_icc_profile(paper: tuple[float, float, float]) -> bytes:
    """A minimal ICC v2 CMYK output profile: the naive ink formula, printed on tinted paper.

    Its CMYK -> Lab table (A2B0, an 8-bit LUT with a 2-point grid per ink) holds, for each
    corner of the ink cube, the Lab colour of (1 - ink) * (1 - black) * paper.
    """
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    corners = Image.new("RGB", (16, 1))
    corners.putdata(
        [
            tuple(
                round(255 * (1 - ink) * (1 - k) * p)
                for ink, p in zip((c, m, y), paper, strict=True)
            )
            for c, m, y, k in itertools.product((0, 1), repeat=4)
        ]
    )
    lab = ImageCms.applyTransform(corners, to_lab)
    grid = b"".join(bytes(lab.getpixel((i, 0))) for i in range(16))
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp = bytes(range(256))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + grid + ramp * 3
    d50 = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"A2B0", a2b0), (b"wtpt", b"XYZ " + bytes(4) + d50)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, tag in tags:
        table += signature + struct.pack(">II", offset + len(body), len(tag))
        body += tag + bytes(-len(tag) % 4)
    header = (
        struct.pack(">I", offset + len(body))
        + bytes(4)
        + struct.pack(">I", 0x02100000)
        + b"prtrCMYKLab "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + d50
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + body


def test_cmyk_jpeg_with_an_embedded_profile_is_converted_through_it():
    # On this (yellowish) paper pure cyan ink is a greener cyan than the naive (0, 255, 255).
    profile = _cmyk_icc_profile(paper=(1.0, 0.94, 0.8))
    data = _encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", icc_profile=profile)
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == profile
    pixel = decode_rgb(data, MAX_PIXELS).getpixel((8, 8))
    assert _close(pixel, (0, 240, 204), tolerance=6)
    assert not _close(pixel, (0, 255, 255), tolerance=30)


def test_cmyk_jpeg_with_a_broken_profile_falls_back_to_the_naive_conversion():
    data = _encode(
        Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", icc_profile=b"not a profile" * 20
    )
    assert _close(decode_rgb(data, MAX_PIXELS).getpixel((8, 8)), (0, 255, 255))


def test_lab_tiff_is_converted_to_rgb_colours():
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(Image.new("RGB", (8, 8), (255, 0, 0)), to_lab)
    data = _encode(lab, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "LAB"
    assert _close(decode_rgb(data, MAX_PIXELS).getpixel((4, 4)), (255, 0, 0), tolerance=6)


def test_ycbcr_tiff_is_converted_to_rgb_colours():
    data = _encode(Image.new("RGB", (8, 8), (255, 0, 0)).convert("YCbCr"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    assert _close(decode_rgb(data, MAX_PIXELS).getpixel((4, 4)), (255, 0, 0), tolerance=4)


def test_one_bit_png_is_black_and_white():
    image = Image.new("1", (8, 8), 0)
    image.putpixel((3, 3), 1)
    decoded = decode_rgb(_encode(image, "PNG"), MAX_PIXELS)
    assert decoded.getpixel((0, 0)) == (0, 0, 0)
    assert decoded.getpixel((3, 3)) == WHITE


def test_greyscale_and_rgb_png_with_a_transparent_colour_become_white_there():
    grey = Image.new("L", (6, 6), 0)
    grey.putpixel((2, 2), 90)
    decoded = decode_rgb(_encode(grey, "PNG", transparency=0), MAX_PIXELS)
    assert decoded.getpixel((0, 0)) == WHITE
    assert decoded.getpixel((2, 2)) == (90, 90, 90)
    rgb = Image.new("RGB", (6, 6), (1, 2, 3))
    rgb.putpixel((2, 2), (0, 0, 200))
    decoded = decode_rgb(_encode(rgb, "PNG", transparency=(1, 2, 3)), MAX_PIXELS)
    assert decoded.getpixel((0, 0)) == WHITE
    assert decoded.getpixel((2, 2)) == (0, 0, 200)


def test_gif_with_a_transparent_index_becomes_white_there():
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putpixel((5, 5), 1)
    decoded = decode_rgb(_encode(image, "GIF", transparency=0), MAX_PIXELS)
    assert decoded.getpixel((0, 0)) == WHITE
    assert decoded.getpixel((5, 5)) == (0, 0, 255)


def _two_frames() -> list[Image.Image]:
    return [Image.new("RGB", (32, 24), (255, 0, 0)), Image.new("RGB", (32, 24), (0, 0, 255))]


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "MPO", "WEBP"])
def test_multi_frame_file_gives_its_first_frame(tmp_path, fmt):
    first, second = _two_frames()
    path = tmp_path / f"two.{fmt.lower()}"  # Pillow writes multi-page TIFF to files only
    first.save(path, format=fmt, save_all=True, append_images=[second])
    data = path.read_bytes()
    opened = Image.open(io.BytesIO(data))
    assert (opened.format, opened.n_frames) == (fmt, 2)
    decoded = decode_rgb(data, MAX_PIXELS)
    assert decoded.size == (32, 24)
    assert _close(decoded.getpixel((16, 12)), (255, 0, 0), tolerance=8)


# --- decode_rgb: draft decoding of JPEGs -------------------------------------------------------


def _photo(width: int, height: int) -> bytes:
    # Smooth, like a photo; a gradient scaled up from a small noise image.
    return _encode(_noise(8, 6).resize((width, height), Image.BILINEAR), "JPEG", quality=90)


def test_draft_size_decodes_a_large_jpeg_smaller_but_not_below_the_draft_size():
    data = _photo(2000, 1500)
    full = decode_rgb(data, MAX_PIXELS)
    drafted = decode_rgb(data, MAX_PIXELS, draft_size=224)
    assert full.size == (2000, 1500)
    assert drafted.size[0] < 2000 and drafted.size[1] < 1500
    assert min(drafted.size) >= 224
    # The same picture, only smaller.
    assert _close(drafted.getpixel((0, 0)), full.getpixel((0, 0)), tolerance=16)


def test_draft_size_leaves_a_small_jpeg_as_it_is():
    data = _photo(400, 300)
    assert decode_rgb(data, MAX_PIXELS, draft_size=224).size == (400, 300)


def test_draft_size_does_not_touch_other_formats():
    data = _encode(_noise(8, 6).resize((2000, 1500)), "PNG")
    assert decode_rgb(data, MAX_PIXELS, draft_size=224).size == (2000, 1500)


def test_draft_size_keeps_the_exif_turn():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    image = _noise(8, 6).resize((2000, 1500))
    data = _encode(image, "JPEG", exif=exif.tobytes())
    width, height = decode_rgb(data, MAX_PIXELS, draft_size=224).size
    assert height > width >= 224


def test_pixel_cap_is_checked_on_the_header_size_not_the_draft_size():
    data = _photo(2000, 1500)
    with pytest.raises(ImageRejected) as excinfo:
        decode_rgb(data, max_pixels=1_000_000, draft_size=224)
    assert excinfo.value.reason == IMAGE_DECOMPRESSION_BOMB
    assert "2000x1500" in excinfo.value.detail


def test_draft_size_must_be_positive():
    with pytest.raises(ValueError, match="draft_size"):
        decode_rgb(_photo(40, 30), MAX_PIXELS, draft_size=0)


# --- trim_uniform_border -----------------------------------------------------------------------


def _framed(content: Image.Image, frame: tuple[int, int, int, int], colour=WHITE) -> Image.Image:
    left, top, right, bottom = frame
    canvas = Image.new("RGB", (left + content.width + right, top + content.height + bottom), colour)
    canvas.paste(content, (left, top))
    return canvas


def test_trim_removes_a_white_frame_and_keeps_the_content():
    content = _noise(60, 40)
    trimmed = trim_uniform_border(_framed(content, (20, 15, 7, 30)))
    assert trimmed.size == (60, 40)
    assert np.array_equal(np.asarray(trimmed), np.asarray(content))


def test_trim_removes_a_frame_of_any_uniform_colour():
    content = Image.new("RGB", (30, 20), (200, 30, 30))
    trimmed = trim_uniform_border(_framed(content, (5, 5, 5, 5), colour=(40, 40, 40)))
    assert trimmed.size == (30, 20)


def test_trim_removes_a_jpeg_compressed_frame_within_tolerance():
    content = Image.new("RGB", (64, 48), (30, 60, 150))
    framed = Image.open(io.BytesIO(_encode(_framed(content, (40, 32, 40, 32)), "JPEG")))
    width, height = trim_uniform_border(framed.convert("RGB")).size
    # JPEG ringing may add a pixel or two around the edge, never the whole frame.
    assert 64 <= width <= 68 and 48 <= height <= 52


def test_trim_keeps_the_side_where_the_product_touches_the_edge():
    content = _noise(50, 30)
    trimmed = trim_uniform_border(_framed(content, (10, 10, 10, 0)))
    assert trimmed.size == (50, 30)


def test_trim_leaves_a_borderless_image_unchanged():
    image = _noise(40, 30)
    assert trim_uniform_border(image) is image


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (100, 80), WHITE),
        _framed(Image.new("RGB", (1, 1), (0, 0, 0)), (50, 40, 49, 39)),
    ],
    ids=["all-background", "one-pixel-speck"],
)
def test_trim_leaves_an_image_with_nothing_but_background_unchanged(image):
    assert trim_uniform_border(image) is image


def test_trim_works_on_greyscale_and_refuses_other_modes():
    content = Image.new("L", (10, 10), 0)
    framed = Image.new("L", (30, 30), 255)
    framed.paste(content, (5, 5))
    assert trim_uniform_border(framed).size == (10, 10)
    with pytest.raises(ValueError, match="RGBA"):
        trim_uniform_border(Image.new("RGBA", (10, 10)))


# --- content_hash ----------------------------------------------------------------------------


def test_content_hash_equal_for_identical_bytes(tmp_path):
    data = _encode(_noise(40, 30), "JPEG", quality=90)
    copy_a = read_bytes(_write(tmp_path / "a.jpg", data), LIMITS)
    copy_b = read_bytes(_write(tmp_path / "b.jpg", data), LIMITS)
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


# --- image_version: what the listing says, no byte read -------------------------------------


def test_image_version_follows_the_listing_not_the_bytes(image_root):
    path = Path(_write(image_root / "a.png", _encode(_noise(8, 8), "PNG")))
    limits = _rooted(image_root)
    first = image_version(str(path), limits)
    assert image_version(str(path), limits) == first
    assert image_version(path.as_uri(), _rooted(image_root.as_uri())) == first
    listed = path.stat()
    os.utime(path, ns=(listed.st_atime_ns, listed.st_mtime_ns + 10**9))  # touched, same bytes
    touched = image_version(str(path), limits)
    assert touched != first
    # Replaced by a rename (how most tools write a file) with the same size and time: the
    # inode still tells.
    replacement = image_root / "a.png.new"
    replacement.write_bytes(
        _encode(_noise(8, 8, seed=1), "PNG")[: listed.st_size].ljust(listed.st_size, b"\0")
    )
    os.utime(replacement, ns=(listed.st_atime_ns, listed.st_mtime_ns + 10**9))
    os.replace(replacement, path)
    assert path.stat().st_size == listed.st_size
    assert image_version(str(path), limits) != touched


def test_image_version_refuses_what_read_bytes_refuses_before_reading(tmp_path, image_root):
    limits = _rooted(image_root)
    outside = _write(tmp_path / "elsewhere.png", _encode(_noise(8, 8), "PNG"))
    (image_root / "link.png").symlink_to(outside)
    (image_root / "empty.png").write_bytes(b"")
    (image_root / "folder.png").mkdir()
    big = _write(image_root / "big.png", b"x" * (MAX_BYTES + 1))
    cases = {
        outside: IMAGE_OUTSIDE_ROOTS,
        str(image_root / "link.png"): IMAGE_OUTSIDE_ROOTS,
        str(image_root / "missing.png"): IMAGE_NOT_FOUND,
        str(image_root / "folder.png"): IMAGE_NOT_FOUND,
        str(image_root / "empty.png"): IMAGE_EMPTY,
        big: IMAGE_TOO_LARGE,
    }
    for uri, reason in cases.items():
        with pytest.raises(ImageRejected) as excinfo:
            image_version(uri, limits)
        assert excinfo.value.reason == reason, uri
        with pytest.raises(ImageRejected) as excinfo:
            read_bytes(uri, limits)
        assert excinfo.value.reason == reason, uri
