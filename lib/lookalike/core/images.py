"""Reading and decoding product images, where every failure is a named reject reason.

A catalog always holds broken images; each one becomes a reason code that a person can act
on, and the batch goes on. Reading goes through the local filesystem for paths and through
pyarrow's filesystems for URIs (``s3://``, ``gs://``, ``hdfs://``), so a cluster reads from
object storage with the same code. The bytes are untrusted: a path is checked against the
image roots after symlinks are followed, the pixel count is checked from the header before
anything is decoded, and only an allowlist of common formats is ever handed to a decoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from functools import lru_cache
from threading import Lock
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from lookalike.core.http_images import Fetched, HttpPolicy

# PIL's global decompression-bomb guard is replaced by decode_rgb's own check of the header's
# size against the configured max_pixels, which rejects with the dimensions in the detail.
Image.MAX_IMAGE_PIXELS = None

# Reason codes; they are a contract with whoever reads the rejects table.
IMAGE_NOT_FOUND = "image_not_found"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_EMPTY = "image_empty"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_DECOMPRESSION_BOMB = "image_decompression_bomb"
IMAGE_TRUNCATED = "image_truncated"
IMAGE_CORRUPT = "image_corrupt"
IMAGE_NOT_AN_IMAGE = "image_not_an_image"
IMAGE_UNSUPPORTED_FORMAT = "image_unsupported_format"
# Also an ingest reason (lookalike.stages.ingest): ingest checks the URI lexically, read_bytes
# checks where the path really leads.
IMAGE_OUTSIDE_ROOTS = "image_outside_roots"

# The formats handed to a decoder; Pillow's other plugins (EPS runs Ghostscript, PSD, ICO, TGA
# and thirty more) never see catalog bytes. MPO (multi-picture JPEG) comes through Pillow's
# JPEG plugin, so it is allowed by "JPEG".
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Pillow reads this many bytes to recognise a format.
_PREFIX_BYTES = 16
# A decoded remainder narrower than this share of the image (or 2 px) is noise, not a product.
_MIN_TRIM_SHARE = 0.01


class ImageRejected(Exception):
    """An image that cannot be used, with a reason code and a human-readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be: its file size, its pixel count, and where it may live.

    ``roots`` are absolute local folders (or ``file:`` URIs) and URI prefixes such as
    ``s3://bucket/images`` or ``https://cdn.shop.example/img/``; empty means no check (but an
    ``http(s)://`` image is fetched only under an ``http(s)`` root). ``http`` says how images
    are fetched over HTTP(S) (``lookalike.core.http_images.HttpPolicy``); without it, the
    policy's defaults under the ``http(s)`` roots.
    """

    max_bytes: int
    max_pixels: int
    roots: tuple[str, ...] = ()
    http: HttpPolicy | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(
                f"max_bytes and max_pixels must be positive, got {self.max_bytes}, "
                f"{self.max_pixels}"
            )
        if isinstance(self.roots, str):
            raise TypeError(f"roots must be a sequence of folders, not the string {self.roots!r}")
        # A list from a config file would make the limits unhashable and mutable.
        object.__setattr__(self, "roots", tuple(self.roots))


def local_path(uri: str) -> str | None:
    """The filesystem path of a plain path or a ``file:`` URI; None for remote URIs.

    ``file:`` URIs are percent-decoded (``front%20view.jpg``), in both the ``file:///x`` form
    and the ``file:/x`` form that Java and Hadoop write.
    """
    if uri.startswith("file:"):
        return unquote(urlparse(uri).path)
    if "://" in uri:
        return None
    return uri


# --- reading -----------------------------------------------------------------------------------


def read_bytes(uri: str, limits: ImageLimits) -> bytes:
    """The file's bytes, or ImageRejected naming why they cannot be had (see ``read_image``)."""
    return read_image(uri, limits)[0]


def read_image(uri: str, limits: ImageLimits) -> tuple[bytes, str | None]:
    """(the file's bytes, the version of the file they were read from), or ImageRejected.

    With ``limits.roots`` set, a local path must lead inside a root once symlinks are
    followed, and a remote URI must start with a remote root; this is checked before any byte
    is read. The version is what ``image_version`` says of the file, taken from the file that
    was opened, so a vector is stored with the listing of exactly the bytes it was made from.
    """
    if is_http(uri):
        return _read_http(uri, limits)
    path = local_path(uri)
    try:
        data, version = (
            _read_remote(uri, limits) if path is None else _read_local(uri, path, limits)
        )
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected(IMAGE_NOT_FOUND, f"no such file: {uri}") from None
    except IsADirectoryError:
        raise ImageRejected(IMAGE_NOT_FOUND, f"a directory, not a file: {uri}") from None
    except (OSError, ValueError) as err:
        # ValueError: a path with a NUL byte, a URI pyarrow cannot parse.
        raise ImageRejected(IMAGE_UNREADABLE, f"{type(err).__name__}: {err}") from None
    if not data:
        raise ImageRejected(IMAGE_EMPTY, "0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageRejected(IMAGE_TOO_LARGE, f"more than {limits.max_bytes} bytes")
    return data, version


def image_version(uri: str, limits: ImageLimits, stored: str | None = None) -> str | None:
    """What the file's listing says of it, without reading a byte: ``size=...;mtime_ns=...``
    (and the inode of a local file, which a replace-by-rename changes).

    An ``http(s)`` image has no listing: with the ``stored`` version of an earlier read (its
    ETag or Last-Modified) it is asked with a conditional GET, and a 304 answers ``stored``
    without a byte of the image; a 200 answers the new version (the bytes are not kept).
    Without a stored validator it is not asked at all: None, the version is unknown.

    Equal versions of the same URI mean the same bytes as long as nothing rewrites a file in
    place with the same size and modification time (what ``make`` and ``rsync`` assume too);
    the embed stage reads and hashes only the images whose version changed. Raises
    ImageRejected for what ``read_bytes`` would refuse before reading (outside the roots,
    missing, a folder, too large, empty).
    """
    if is_http(uri):
        return _http_version(uri, limits, stored)
    path = local_path(uri)
    try:
        if path is None:
            _, _, info = _remote_file(uri, limits)
            size, version = info.size, _remote_version(info)
        else:
            listed = os.stat(_inside_local_roots(uri, path, limits))
            _check_listed(uri, listed, limits)
            size, version = listed.st_size, _local_version(listed)
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected(IMAGE_NOT_FOUND, f"no such file: {uri}") from None
    except (OSError, ValueError) as err:
        raise ImageRejected(IMAGE_UNREADABLE, f"{type(err).__name__}: {err}") from None
    if size == 0:
        raise ImageRejected(IMAGE_EMPTY, "0 bytes")
    return version


# --- HTTP(S) images (lookalike.core.http_images) -------------------------------------------

# Per process: what this worker fetched; the embed stage adds each batch's share to the run's
# counts (``http_counts``).
_HTTP_COUNTS: dict[str, int] = {"downloads": 0, "not_modified": 0, "bytes_downloaded": 0}
_HTTP_COUNTS_LOCK = Lock()


def is_http(uri: str) -> bool:
    return uri[:8].lower().startswith(("http://", "https://"))


def http_counts() -> dict[str, int]:
    """Images this process downloaded, conditional GETs answered 304, bytes downloaded."""
    with _HTTP_COUNTS_LOCK:
        return dict(_HTTP_COUNTS)


def _count(fetched: Fetched) -> None:
    with _HTTP_COUNTS_LOCK:
        if fetched.data is None:
            _HTTP_COUNTS["not_modified"] += 1
        else:
            _HTTP_COUNTS["downloads"] += 1
            _HTTP_COUNTS["bytes_downloaded"] += len(fetched.data)


def http_policy(limits: ImageLimits) -> HttpPolicy:
    """The limits' HTTP policy, or the default one under their ``http(s)`` roots."""
    from lookalike.core import http_images

    prefixes = tuple(r for r in limits.roots if is_http(r))
    if not prefixes:
        raise ImageRejected(
            http_images.IMAGE_URL_NOT_ALLOWED,
            "no http(s) prefix among the image roots (catalog.image_roots): no image URL is "
            "fetched",
        )
    if limits.http is not None:
        return limits.http
    return _default_policy(prefixes, limits.max_bytes)


@lru_cache(maxsize=8)
def _default_policy(prefixes: tuple[str, ...], max_bytes: int) -> HttpPolicy:
    from lookalike.core.http_images import HttpPolicy

    return HttpPolicy(prefixes=prefixes, max_bytes=max_bytes)


def _read_http(uri: str, limits: ImageLimits) -> tuple[bytes, str | None]:
    from lookalike.core.http_images import fetch

    fetched = fetch(uri, http_policy(limits))  # HttpRejected (an ImageRejected) on failure
    _count(fetched)
    if len(fetched.data) > limits.max_bytes:
        raise ImageRejected(IMAGE_TOO_LARGE, f"more than {limits.max_bytes} bytes")
    return fetched.data, _validator(fetched)


def _http_version(uri: str, limits: ImageLimits, stored: str | None) -> str | None:
    from lookalike.core.http_images import fetch

    name, _, value = (stored or "").partition("=")
    if name not in ("etag", "last_modified") or not value:
        return None
    policy = http_policy(limits)
    if name == "etag":
        fetched = fetch(uri, policy, etag=value)
    else:
        fetched = fetch(uri, policy, last_modified=value)
    _count(fetched)
    return stored if fetched.data is None else _validator(fetched)


def _validator(fetched: Fetched) -> str | None:
    """The version of an HTTP image: its ETag, else its Last-Modified; None without either."""
    if fetched.etag:
        return f"etag={fetched.etag}"
    if fetched.last_modified:
        return f"last_modified={fetched.last_modified}"
    return None


def _local_version(info: os.stat_result) -> str:
    return f"size={info.st_size};mtime_ns={info.st_mtime_ns};ino={info.st_ino}"


def _remote_version(info) -> str:
    return f"size={info.size};mtime_ns={info.mtime_ns}"


def _read_local(uri: str, path: str, limits: ImageLimits) -> tuple[bytes, str]:
    real = _inside_local_roots(uri, path, limits)
    # The resolved path is opened, without following a link at its end, so a symlink swapped
    # in after the check is refused; non-blocking so a FIFO cannot hang the task.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(real, flags)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        _check_listed(uri, info, limits)
        return handle.read(limits.max_bytes + 1), _local_version(info)


def _read_remote(uri: str, limits: ImageLimits) -> tuple[bytes, str]:
    filesystem, path, info = _remote_file(uri, limits)
    with filesystem.open_input_stream(path) as stream:
        return stream.read(limits.max_bytes + 1), _remote_version(info)


def _inside_local_roots(uri: str, path: str, limits: ImageLimits) -> str:
    """The path with symlinks followed, or ImageRejected when it leads outside the roots."""
    real = os.path.realpath(path)
    if limits.roots:
        local_roots = _real_local_roots(limits.roots)
        if not any(_is_under(real, root) for root in local_roots):
            raise ImageRejected(IMAGE_OUTSIDE_ROOTS, _outside_detail(uri, real, local_roots))
    return real


def _check_listed(uri: str, info: os.stat_result, limits: ImageLimits) -> None:
    """What the file's metadata already rules out: a folder, a device or FIFO, an oversize file."""
    if stat.S_ISDIR(info.st_mode):
        raise ImageRejected(IMAGE_NOT_FOUND, f"a directory, not a file: {uri}")
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(IMAGE_UNREADABLE, f"not a regular file: {uri}")
    if info.st_size > limits.max_bytes:
        raise ImageRejected(IMAGE_TOO_LARGE, f"{info.st_size} bytes > {limits.max_bytes}")


def _remote_file(uri: str, limits: ImageLimits):
    """(pyarrow filesystem, path, file info) of an object under the remote roots."""
    if limits.roots:
        normalised = _normalise_remote(uri)
        remote_roots = [_normalise_remote(r) for r in limits.roots if local_path(r) is None]
        if not any(_is_under(normalised, root) for root in remote_roots):
            raise ImageRejected(IMAGE_OUTSIDE_ROOTS, _outside_detail(uri, normalised, remote_roots))
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise ImageRejected(IMAGE_NOT_FOUND, f"no such object: {uri}")
    if info.type == fs.FileType.Directory:
        raise ImageRejected(IMAGE_NOT_FOUND, f"a directory, not an object: {uri}")
    if info.size is not None and info.size > limits.max_bytes:
        raise ImageRejected(IMAGE_TOO_LARGE, f"{info.size} bytes > {limits.max_bytes}")
    return filesystem, path, info


@lru_cache(maxsize=32)
def _real_local_roots(roots: tuple[str, ...]) -> tuple[str, ...]:
    # Resolved once per worker, not once per image; a root may itself be a symlink (/data ->
    # /mnt/disk1/data), and the image's real path is compared with the root's real path.
    return tuple(os.path.realpath(p) for p in map(local_path, roots) if p is not None)


def _normalise_remote(uri: str) -> str:
    # Collapses "..": s3://bucket/images/../private/x.jpg is not under s3://bucket/images.
    scheme, _, rest = uri.partition("://")
    return f"{scheme.lower()}://{posixpath.normpath(rest)}"


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _outside_detail(uri: str, resolved: str, roots: tuple[str, ...] | list[str]) -> str:
    where = f"{uri} is" if resolved == uri else f"{uri} resolves to {resolved}, which is"
    listed = ", ".join(roots) if roots else "(no root of this kind)"
    return f"{where} outside the image roots: {listed}"


def content_hash(data: bytes) -> str:
    """The identity of an image file's bytes: equal hashes are exact copies."""
    return hashlib.sha256(data).hexdigest()


# --- decoding ----------------------------------------------------------------------------------


def decode_rgb(data: bytes, max_pixels: int, *, draft_size: int | None = None) -> Image.Image:
    """Decode to an upright 8-bit RGB image, with transparency flattened onto white.

    The pixel count is checked from the header before any pixel is decoded. Multi-frame
    files (GIF, TIFF, MPO) give their first frame. With ``draft_size``, a JPEG is decoded at
    the smallest DCT scale (1/2, 1/4, 1/8) whose sides are both still >= draft_size, which
    saves most of the decoding time of a large photo that will be shrunk anyway.
    """
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be positive, got {draft_size}")
    image = _open(data)
    # A small file can decode to gigapixels (a decompression bomb).
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(
            IMAGE_DECOMPRESSION_BOMB,
            f"header says {width}x{height} = {width * height} pixels > max_pixels {max_pixels}",
        )
    if draft_size is not None and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_size, draft_size))
    try:
        image.load()
    except Exception as err:  # a decoder may raise anything on hostile data
        raise ImageRejected(
            _failure_reason(image.format, data, err), f"{image.format}: {_describe(err)}"
        ) from None
    # Broken EXIF costs the orientation, not the image.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _open(data: bytes) -> ImageFile.ImageFile:
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        pass
    except Exception as err:  # a header parser may raise anything
        fmt = _allowed_format_of(data) or "image"
        raise ImageRejected(_failure_reason(fmt, data, err), f"{fmt}: {_describe(err)}") from None
    fmt = _allowed_format_of(data)
    if fmt is not None:
        # Its signature is one we accept, but Pillow could not read the header: ask the
        # plugin again, which is safe (it is allowed), to learn why.
        factory = Image.OPEN[fmt][0]
        try:
            factory(io.BytesIO(data), "")
            err: Exception = SyntaxError("header could not be read")
        except Exception as raised:
            err = raised
        raise ImageRejected(_failure_reason(fmt, data, err), f"{fmt}: {_describe(err)}")
    foreign = _unsupported_format_of(data)
    if foreign is not None:
        raise ImageRejected(
            IMAGE_UNSUPPORTED_FORMAT,
            f"{foreign} is not an accepted format (accepted: {', '.join(ALLOWED_FORMATS)}, MPO)",
        )
    raise ImageRejected(
        IMAGE_NOT_AN_IMAGE, f"no image format recognised ({_what_is(data)}); starts {data[:16]!r}"
    )


def _accepts(accept, prefix: bytes) -> bool:
    try:
        # A string answer means "this is my format, but this Pillow build cannot read it".
        return bool(accept(prefix))
    except Exception:
        return False


def _allowed_format_of(data: bytes) -> str | None:
    Image.init()
    prefix = data[:_PREFIX_BYTES]
    for fmt in ALLOWED_FORMATS:
        accept = Image.OPEN[fmt][1]
        if accept is not None and _accepts(accept, prefix):
            return fmt
    return None


# Signatures of image formats this Pillow cannot identify (or identifies under another name).
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_AVIF_BRANDS = {b"avif", b"avis"}
# "<svg", or an XML declaration (and comments) then "<svg" or an SVG doctype.
_SVG_START = re.compile(
    rb"\s*(<svg[\s>]|<\?xml[^>]*>\s*(<!--.*?-->\s*)*(<!doctype\s+svg|<svg[\s>]))", re.I | re.S
)
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def _unsupported_format_of(data: bytes) -> str | None:
    """The name of the (not accepted) image format of data, or None if it is no image."""
    if data[4:8] == b"ftyp":
        # The major brand, then (after a version) the compatible brands, in the ftyp box.
        box_end = min(int.from_bytes(data[:4], "big"), 256)
        brands = {data[8:12]} | {data[i : i + 4] for i in range(16, box_end, 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIC"
        if brands & {b"mif1", b"msf1"}:
            return "HEIF"
        return None  # an MP4 or QuickTime video
    if data.startswith((b"\xff\x0a", _JXL_CONTAINER)):
        return "JPEG XL"
    if _SVG_START.match(data[:4096].removeprefix(b"\xef\xbb\xbf")):
        return "SVG"
    # Pillow's other plugins, as Pillow itself identifies a file: signature, then header.
    # Their header parsers are Python (AVIF's, which is native, is left out); nothing here
    # loads pixels, which is where EPS would run Ghostscript.
    Image.init()
    identify_only = [f for f in Image.OPEN if f not in ALLOWED_FORMATS and f != "AVIF"]
    try:
        with Image.open(io.BytesIO(data), formats=identify_only) as image:
            return image.format
    except Exception:
        pass
    # A signature with a header that failed to parse: still that format, not "no image".
    prefix = data[:_PREFIX_BYTES]
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt not in ALLOWED_FORMATS and accept is not None and _accepts(accept, prefix):
            return fmt
    return None


def _what_is(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if b"<html" in head or head.startswith(b"<!doctype html"):
        return "an HTML page"
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if head.startswith((b"{", b"[")):
        return "JSON or text"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in data[:512]):
        return "text"
    return "unknown binary data"


def _failure_reason(fmt: str | None, data: bytes, err: BaseException) -> str:
    """IMAGE_TRUNCATED when the data ends early, else IMAGE_CORRUPT."""
    if isinstance(err, EOFError) or "truncated" in str(err).lower():
        return IMAGE_TRUNCATED
    return IMAGE_TRUNCATED if _ends_early(fmt, data) else IMAGE_CORRUPT


def _ends_early(fmt: str | None, data: bytes) -> bool:
    # Each format's own end: its end marker, or the length its header promises.
    tail = data.rstrip(b"\x00")
    if fmt in ("JPEG", "MPO"):
        return not tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" not in data[-12:]
    if fmt == "GIF":
        return not tail.endswith(b";")
    if fmt == "WEBP":
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    if fmt == "BMP":
        return len(data) < int.from_bytes(data[2:6], "little")
    if fmt == "TIFF" and len(data) >= 8:
        big_endian = data[:2] == b"MM"
        if data[2:4] in (b"\x00\x2b", b"\x2b\x00"):  # BigTIFF: an 8-byte offset at 8
            return len(data) < 16 or int.from_bytes(
                data[8:16], "big" if big_endian else "little"
            ) >= len(data)
        order = "big" if big_endian else "little"
        # The first directory (offset at 4) and its entries, 12 bytes each, must be there.
        offset = int.from_bytes(data[4:8], order)
        if offset + 2 > len(data):
            return True
        entries = int.from_bytes(data[offset : offset + 2], order)
        return offset + 2 + 12 * entries + 4 > len(data)
    return len(data) < _PREFIX_BYTES


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


# --- converting to RGB ---------------------------------------------------------------------------

_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    transparency = image.info.get("transparency")
    try:
        if mode in _WIDE_GREY_MODES:
            return _wide_grey_to_rgb(image, transparency)
        if mode == "F":
            return _float_to_rgb(image)
        if mode == "CMYK":
            return _cmyk_to_rgb(image)
        if mode == "LAB":
            # Recent Pillow converts LAB the same way; older releases (the project allows
            # Pillow >= 10) do it without colour management.
            return ImageCms.applyTransform(image, _lab_to_srgb())
        if mode in _ALPHA_MODES or transparency is not None:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError, ImageCms.PyCMSError) as err:
        raise ImageRejected(
            IMAGE_UNSUPPORTED_FORMAT,
            f"{image.format or 'image'} in mode {mode} cannot be converted to RGB: {err}",
        ) from None


def _wide_grey_to_rgb(image: Image.Image, transparency: object) -> Image.Image:
    # Pillow's convert() clips 16-bit values to 255 (mid-grey 0x8000 would come out white);
    # the top 8 bits are the 8-bit value. Mode "I" is read as 16-bit too: that is what PNG
    # and TIFF decoders put in it.
    values = np.asarray(image).astype(np.int64)
    grey = (np.clip(values, 0, 0xFFFF) >> 8).astype(np.uint8)
    if isinstance(transparency, int):
        grey[values == transparency] = 255  # a PNG colour key: transparent, so white
    return Image.fromarray(grey, "L").convert("RGB")


def _float_to_rgb(image: Image.Image) -> Image.Image:
    # Float images (TIFF) hold 0..1 by convention, sometimes 0..255; NaN is taken as black.
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow has already undone Adobe's inverted CMYK. A print profile, when the file embeds
    # one, says what the inks look like; without it, the naive formula is the best guess.
    profile = image.info.get("icc_profile")
    transform = _cmyk_transform(profile) if profile else None
    if transform is not None:
        try:
            return ImageCms.applyTransform(image, transform)
        except (ImageCms.PyCMSError, ValueError, OSError):
            pass
    return image.convert("RGB")


@lru_cache(maxsize=16)
def _cmyk_transform(profile: bytes) -> ImageCms.ImageCmsTransform | None:
    # Catalogs reuse a handful of profiles; building a transform costs milliseconds.
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if source.profile.xcolor_space.strip() != "CMYK":
            return None
        return ImageCms.buildTransform(
            source,
            ImageCms.createProfile("sRGB"),
            "CMYK",
            "RGB",
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
        )
    except (ImageCms.PyCMSError, ValueError, OSError, TypeError):
        return None  # a broken profile: fall back to the naive conversion


@lru_cache(maxsize=1)
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


# --- trimming ----------------------------------------------------------------------------------


def trim_uniform_border(image: Image.Image, tolerance: int = 10) -> Image.Image:
    """Crop away a uniform background frame around the product (an RGB or L image).

    The background is the colour most of the four corners share; a pixel within ``tolerance``
    of it on every channel is background. The image comes back unchanged when there is no
    frame, or when what would remain is empty or a sliver (under 1 % of a side, or 2 px):
    a blank photo or a speck of noise is not a product.
    """
    if image.mode not in ("RGB", "L"):
        raise ValueError(f"trim_uniform_border takes an RGB or L image, got mode {image.mode}")
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width = pixels.shape[:2]
    if height < 3 or width < 3:
        return image
    channels = pixels.shape[2]
    background = _corner_colour(pixels, tolerance)
    # Compared in uint8 against [low, high], with the channels laid along each row: no widened
    # copy of the image, and no reduction over a 3-wide axis (20x slower on a 3 Mpx photo).
    low = np.clip(background - tolerance, 0, 255).astype(np.uint8)
    high = np.clip(background + tolerance, 0, 255).astype(np.uint8)
    flat = pixels.reshape(height, width * channels)
    foreground = np.zeros(flat.shape, dtype=bool)
    # A bound at 0 or 255 cannot be crossed: a white background needs one comparison, not two.
    if low.any():
        foreground |= flat < np.tile(low, width)
    if (high < 255).any():
        foreground |= flat > np.tile(high, width)
    rows = np.flatnonzero(foreground.any(axis=1))
    cols = np.flatnonzero(foreground.any(axis=0).reshape(width, channels).any(axis=1))
    if rows.size == 0:
        return image
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (top, bottom, left, right) == (0, height, 0, width):
        return image
    min_height = max(2, _MIN_TRIM_SHARE * height)
    min_width = max(2, _MIN_TRIM_SHARE * width)
    if bottom - top < min_height or right - left < min_width:
        return image
    return image.crop((int(left), int(top), int(right), int(bottom)))


def _corner_colour(pixels: np.ndarray, tolerance: int) -> np.ndarray:
    corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]].astype(np.int16)
    # The corner that agrees with the most others; ties go to the top left.
    agreement = [
        sum(bool((np.abs(c - other) <= tolerance).all()) for other in corners) for c in corners
    ]
    return corners[int(np.argmax(agreement))]
