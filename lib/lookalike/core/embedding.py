"""Embedding a list of image URIs: read, decode, hash, network, one result row per URI.

The embed stage's pandas UDF calls ``embed_uris`` on each batch of its executors; evaluation,
benchmarks and a GPU box call it directly, without Spark. A bad image becomes a row with its
reject reason, never an exception.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import pandas as pd

from lookalike.core.backbones import Embedder, Views
from lookalike.core.images import ImageLimits, ImageRejected, content_hash, decode_rgb, read_image
from lookalike.core.perceptual import phash_with_mirrored
from lookalike.core.thumbnails import thumbnail

# The columns of ``embed_uris``'s result, in order (the embed stage's EMBED_RESULT types them).
EMBED_COLUMNS = (
    "content_hash",
    "model_id",
    "embedding",
    "rmac",  # the duplicate descriptor (lookalike.core.rmac.duplicate_descriptors)
    "phash",
    "phash_mirrored",
    "thumbnail",  # the grey thumbnail that settles undecided duplicate pairs
    "reject_reason",
    "reject_detail",
    "image_version",  # what the listing said of the file read (lookalike.core.images)
)

_GPU_DECODE_THREADS = 4


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def decode_threads(setting: int, embedder: Embedder) -> int:
    if setting:
        return setting
    return _GPU_DECODE_THREADS if embedder.device.type == "cuda" else 1


def _load(uri: str, embedder: Embedder, limits: ImageLimits) -> tuple[tuple, Views]:
    """((content hash, pHash, mirrored pHash, thumbnail, image version), the network's views)
    of one image.

    Raises ImageRejected if it cannot be used. The perceptual hashes, the thumbnail and every
    view are taken from the image decoded for the network, so they cost no second read or
    decode.
    """
    data, version = read_image(uri, limits)
    image = decode_rgb(data, limits.max_pixels, draft_size=embedder.draft_size)
    keys = (content_hash(data), *phash_with_mirrored(image), thumbnail(image), version)
    return keys, embedder.prepare_views(image)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def embed_uris(
    uris: Iterable[str], embedder: Embedder, limits: ImageLimits, threads: int = 1
) -> pd.DataFrame:
    """One result row per URI, in order: hash + vector, or the reason the image was rejected.

    With ``threads`` > 1, images are decoded by a thread pool while the network runs on the
    batch before (PIL releases the GIL while decoding): what keeps a GPU busy.
    """

    def load(uri: str) -> tuple[tuple, tuple] | ImageRejected:
        try:
            return _load(uri, embedder, limits)
        except ImageRejected as rejected:
            return rejected

    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        loaded = pool.map(load, uris) if pool else map(load, uris)
        rows: list[tuple] = []
        for batch in _batches(loaded, embedder.batch_size):
            good = [item for item in batch if not isinstance(item, ImageRejected)]
            vectors, descriptors = embedder.embed_views([views for _, views in good])
            outputs = zip(vectors.numpy(), descriptors.numpy(), strict=True)
            for item in batch:
                if isinstance(item, ImageRejected):
                    rows.append((None,) * 7 + (item.reason, item.detail, None))
                else:
                    (digest, phash, mirrored, thumb, version), _ = item
                    vector, descriptor = next(outputs)
                    rows.append(
                        (digest, embedder.model_id, vector, descriptor, phash, mirrored, thumb)
                        + (None, None, version)
                    )
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    # Typed columns: an all-rejected batch must still give Arrow a list column, not floats.
    return pd.DataFrame(
        {
            name: pd.Series([row[i] for row in rows], dtype=object)
            for i, name in enumerate(EMBED_COLUMNS)
        }
    )
