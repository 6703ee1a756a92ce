"""Reading and decoding product images, where every failure is a named reject reason.

A catalog always holds broken images; each one becomes a reason code that a person can act
on, and the batch goes on. Reading goes through the local filesystem for paths and through
pyarrow's filesystems for URIs (``s3://``, ``gs://``, ``hdfs://``), so a cluster reads from
object storage with the same code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's global decompression-bomb guard is replaced by decode_rgb's own check of the header's
# size against the configured max_pixels, which rejects with the dimensions in the detail.
Image.MAX_IMAGE_PIXELS = None

# Reason codes; they are a contract with whoever reads the rejects table.
IMAGE_NOT_FOUND = "image_not_found"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_EMPTY = "image_empty"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_TRUNCATED = "image_truncated"
IMAGE_UNDECODABLE = "image_undecodable"


class ImageRejected(Exception):
    """An image that cannot be used, with a reason code and a human-readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


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


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """The file's bytes, or ImageRejected naming why they cannot be had."""
    path = local_path(uri)
    try:
        if path is None:
            from pyarrow import fs

            filesystem, path = fs.FileSystem.from_uri(uri)
            info = filesystem.get_file_info(path)
            if info.type == fs.FileType.NotFound:
                raise ImageRejected(IMAGE_NOT_FOUND, f"no such object: {uri}")
            if info.size is not None and info.size > max_bytes:
                raise ImageRejected(IMAGE_TOO_LARGE, f"{info.size} bytes > {max_bytes}")
            with filesystem.open_input_stream(path) as stream:
                data = stream.read(max_bytes + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected(IMAGE_NOT_FOUND, f"no such file: {uri}") from None
    except IsADirectoryError:
        raise ImageRejected(IMAGE_NOT_FOUND, f"a directory, not a file: {uri}") from None
    except OSError as err:
        raise ImageRejected(IMAGE_UNREADABLE, f"{type(err).__name__}: {err}") from None
    if not data:
        raise ImageRejected(IMAGE_EMPTY, "0 bytes")
    if len(data) > max_bytes:
        raise ImageRejected(IMAGE_TOO_LARGE, f"more than {max_bytes} bytes")
    return data


def content_hash(data: bytes) -> str:
    """The identity of an image file's bytes: equal hashes are exact copies."""
    return hashlib.sha256(data).hexdigest()


def decode_rgb(data: bytes, max_pixels: int) -> Image.Image:
    """Decode to an upright RGB image, with transparency flattened onto white."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected(IMAGE_UNDECODABLE, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageRejected(IMAGE_UNDECODABLE, f"{type(err).__name__}: {err}") from None
    # Checked from the header, before the pixels are decoded: a small file can decode to
    # gigapixels (a decompression bomb).
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(IMAGE_TOO_LARGE, f"{width}x{height} pixels > {max_pixels}")
    try:
        image.load()
    except OSError as err:
        reason = IMAGE_TRUNCATED if "truncated" in str(err).lower() else IMAGE_UNDECODABLE
        raise ImageRejected(reason, f"{type(err).__name__}: {err}") from None
    except (ValueError, SyntaxError) as err:
        raise ImageRejected(IMAGE_UNDECODABLE, f"{type(err).__name__}: {err}") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")
