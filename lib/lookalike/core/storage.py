"""Where the job's outputs live: a local folder or object storage, addressed the same way.

``output.root`` is a folder (``var``, ``/data/lookalike``) or a URI (``s3a://bucket/lookalike``,
``gs://``, ``abfs://``, ``hdfs://``, ``file:///``). Spark reads and writes the run's Parquet
through its own (Hadoop) filesystems and is handed the address as configured; delta-rs takes
it as it is too. Everything else the job writes (index files, stage stats, the report, the
staging of a Delta commit) goes through a ``Location``: the same address with the few file
operations the job needs, done with the local filesystem for folders and with pyarrow's
filesystems for URIs. A stage never asks which kind it has.

What differs, and is handled here:
- atomic writes: a local file is written beside and renamed; an object store's PUT is atomic.
- copies: a hard link locally (free), a server-side copy on object stores.
- memory-mapping (Annoy, numpy): only local files can be mapped, so ``local_copy`` fetches an
  object once per machine into a cache keyed by its checksum.
- Hadoop's scheme names (``s3a://``, ``s3n://``) are pyarrow's ``s3://``.

Credentials come from where each library's S3 client looks (``AWS_*`` variables, instance
roles); ``AWS_ENDPOINT_URL`` points all of them at an S3-compatible store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from pyarrow import fs as pafs

log = logging.getLogger(__name__)

# Hadoop's names for S3, which pyarrow knows as s3://.
_S3_ALIASES = {"s3a": "s3", "s3n": "s3"}
# The schemes pyarrow opens, by how a URI's first part maps to a path in its filesystem:
# bucket/key (S3, GCS); container@account/key -> container/key (Azure); host:port/path -> /path.
_BUCKET_SCHEMES = frozenset({"s3", "s3a", "s3n", "gs", "gcs"})
_CONTAINER_SCHEMES = frozenset({"abfs", "abfss"})
_HOST_SCHEMES = frozenset({"hdfs", "viewfs"})
SCHEMES = tuple(sorted(_BUCKET_SCHEMES | _CONTAINER_SCHEMES | _HOST_SCHEMES))
# Cached copies of remote index files not used for this long are deleted.
_CACHE_MAX_IDLE_S = 2 * 24 * 3600


def _scheme(address: str) -> str:
    head, sep, _ = address.partition("://")
    return head.lower() if sep and head.isascii() and head.replace("+", "").isalnum() else ""


@dataclass(frozen=True, order=True)
class Location:
    """A file or folder: an absolute local path, or a URI on a remote filesystem."""

    address: str

    @classmethod
    def of(cls, value: str | os.PathLike[str] | Location) -> Location:
        """A Location from a path, a URI or a Location; local paths are made absolute and
        ``file:`` URIs become paths. A URI of a scheme that pyarrow cannot open, or without
        its bucket (or host), raises ValueError naming it."""
        if isinstance(value, Location):
            return value
        text = os.fspath(value)
        if text.startswith("file:"):
            text = unquote(urlparse(text).path)
        scheme = _scheme(text)
        if not scheme:
            return cls(os.path.abspath(os.path.expanduser(text)))
        rest = text.split("://", 1)[1].rstrip("/")
        if scheme not in SCHEMES:
            raise ValueError(
                f"{text}: {scheme}:// is not a filesystem the job can write to; give a folder "
                f"or a URI of {', '.join(s + '://' for s in SCHEMES)}"
            )
        if not rest.split("/", 1)[0]:
            raise ValueError(f"{text}: no bucket (or host) after {scheme}://")
        return cls(f"{scheme}://{rest}")

    # --- addressing ------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return not _scheme(self.address)

    @property
    def scheme(self) -> str:
        return _scheme(self.address) or "file"

    def __str__(self) -> str:
        return self.address

    def __fspath__(self) -> str:
        # os.fspath, open(), pandas and pyarrow accept a local Location as a path; a remote
        # one must go through the methods below, never be mistaken for a relative path.
        if not self.is_local:
            raise TypeError(f"{self.address} is not a local path; use lookalike.core.storage")
        return self.address

    def __truediv__(self, part: str) -> Location:
        if self.is_local:
            return Location(os.path.join(self.address, part))
        return Location(posixpath.join(self.address, part))

    @property
    def name(self) -> str:
        return posixpath.basename(self.address.rstrip("/"))

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location(os.path.dirname(self.address))
        scheme, rest = self.address.split("://", 1)
        return Location(f"{scheme}://{posixpath.dirname(rest)}") if "/" in rest else self

    @property
    def path(self) -> Path:
        """The local path; a remote location raises (use ``local_copy`` to map one)."""
        return Path(os.fspath(self))

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        """pyarrow's filesystem and the path within it (for datasets and Parquet files)."""
        if self.is_local:
            return pafs.LocalFileSystem(), self.address
        scheme, rest = self.address.split("://", 1)
        host, _, key = rest.partition("/")
        if scheme in _CONTAINER_SCHEMES:
            path = f"{host.split('@', 1)[0]}/{key}".rstrip("/")
        elif scheme in _HOST_SCHEMES:
            path = f"/{key}"
        else:
            path = rest
        return _remote_filesystem(scheme, host), path

    # --- reading ---------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        filesystem, path = self.arrow()
        return filesystem.get_file_info(path)

    def exists(self) -> bool:
        if self.is_local:
            return os.path.exists(self.address)
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        if self.is_local:
            return os.path.isdir(self.address)
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        if self.is_local:
            return os.path.isfile(self.address)
        return self._info().type == pafs.FileType.File

    def size(self) -> int:
        if self.is_local:
            return os.stat(self.address).st_size
        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"no such file: {self.address}")
        return info.size

    def mtime_ms(self) -> int:
        """Last modification, in milliseconds since the epoch (what a Delta add action says)."""
        if self.is_local:
            return int(os.stat(self.address).st_mtime * 1000)
        info = self._info()
        return info.mtime_ns // 1_000_000 if info.mtime_ns is not None else int(time.time() * 1000)

    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.address).read_bytes()
        filesystem, path = self.arrow()
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def open_input_file(self):
        """A seekable pyarrow file (what ``pq.read_metadata`` and friends take)."""
        filesystem, path = self.arrow()
        return filesystem.open_input_file(path)

    def iterdir(self) -> Iterator[Location]:
        """The folder's direct entries, sorted; none when the folder does not exist."""
        if self.is_local:
            if not os.path.isdir(self.address):
                return iter(())
            return iter(sorted(self / name for name in os.listdir(self.address)))
        filesystem, path = self.arrow()
        selector = pafs.FileSelector(path, allow_not_found=True)
        return iter(
            sorted(self / posixpath.basename(i.path) for i in filesystem.get_file_info(selector))
        )

    def sha256(self) -> str:
        """Hex sha256 of the file's bytes, read in 1 MiB chunks (index files can be large)."""
        digest = hashlib.sha256()
        if self.is_local:
            with open(self.address, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            filesystem, path = self.arrow()
            with filesystem.open_input_stream(path) as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    # --- writing ---------------------------------------------------------------------------

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Create the folder (with its parents, as pathlib's ``mkdir(parents=True)``); object
        stores have no folders to create."""
        if not self.is_local:
            return
        if parents:
            os.makedirs(self.address, exist_ok=exist_ok)
        else:
            try:
                os.mkdir(self.address)
            except FileExistsError:
                if not exist_ok:
                    raise

    def write_bytes(self, data: bytes) -> None:
        """Replace the file's contents at once: readers see the old bytes or the new ones.

        Locally: written beside under a unique name, flushed to disk and renamed (created
        with open(), so it gets the usual umask permissions). On object stores one PUT, which
        is atomic there.
        """
        if not self.is_local:
            filesystem, path = self.arrow()
            with filesystem.open_output_stream(path) as stream:
                stream.write(data)
            return
        self.parent.mkdir()
        tmp = f"{os.path.dirname(self.address)}/.{self.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.address)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def upload(self, source: Path) -> None:
        """Copy a local file here: renamed into place locally, one upload remotely."""
        if self.is_local:
            self.parent.mkdir()
            partial = f"{self.address}.{uuid.uuid4().hex[:8]}.partial"
            shutil.copyfile(source, partial)
            os.replace(partial, self.address)
            return
        filesystem, path = self.arrow()
        pafs.copy_files(str(source), path, destination_filesystem=filesystem)

    def copy_to(self, target: Location) -> None:
        """Copy this file to ``target``: a hard link when both are on one local filesystem,
        a server-side copy within one object store, else the bytes."""
        if self.is_local and target.is_local:
            target.parent.mkdir()
            try:
                os.link(self.address, target.address)
                return
            except OSError:
                target.upload(self.path)
                return
        if not self.is_local and not target.is_local and self.scheme == target.scheme:
            filesystem, path = self.arrow()
            target_fs, target_path = target.arrow()
            if target_fs is filesystem:
                filesystem.copy_file(path, target_path)
                return
        source_fs, source_path = self.arrow()
        target_fs, target_path = target.arrow()
        pafs.copy_files(
            source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs
        )

    def unlink(self, missing_ok: bool = True) -> None:
        if self.is_local:
            try:
                os.unlink(self.address)
            except FileNotFoundError:
                if not missing_ok:
                    raise
            return
        filesystem, path = self.arrow()
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete the folder and everything in it; nothing happens when it does not exist."""
        if self.is_local:
            shutil.rmtree(self.address, ignore_errors=True)
            return
        filesystem, path = self.arrow()
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_dir(path)

    # --- mapping ---------------------------------------------------------------------------

    def local_copy(self, checksum: str, cache_dir: Path | None = None) -> Path:
        """A local file with this file's bytes, for memory-mapping: the file itself when it is
        local; else a copy in ``cache_dir`` (default ``$LOOKALIKE_CACHE_DIR``, else
        ``<tmp>/lookalike-cache``) named by ``checksum``, fetched once per machine and shared
        by every task that opens it.

        The copy is checked against ``checksum`` (sha256) when fetched, so a cached file is
        the object the manifest names; copies idle for two days are deleted.
        """
        if self.is_local:
            return self.path
        cache_dir = cache_dir or Path(
            os.environ.get("LOOKALIKE_CACHE_DIR") or Path(tempfile.gettempdir()) / "lookalike-cache"
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        target = cache_dir / f"{checksum[:32]}-{self.name}"
        if target.exists():
            os.utime(target)  # still in use: not idle
            return target
        partial = cache_dir / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            filesystem, path = self.arrow()
            pafs.copy_files(path, str(partial), source_filesystem=filesystem)
            got = Location.of(partial).sha256()
            if got != checksum:
                raise ChecksumMismatch(
                    f"{self.address}: sha256 {got[:16]}..., expected {checksum[:16]}..."
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        _prune_cache(cache_dir, keep=target)
        return target


class ChecksumMismatch(OSError):
    """A fetched file's bytes are not those its manifest names."""


@lru_cache(maxsize=16)
def _remote_filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    """One client per scheme and bucket and process (a client is costly to make: credentials,
    region lookup). ``AWS_ENDPOINT_URL`` names an S3-compatible store's endpoint."""
    scheme = _S3_ALIASES.get(scheme, scheme)
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict = {}
        if endpoint:
            parsed = urlparse(endpoint)
            options["endpoint_override"] = parsed.netloc or endpoint
            options["scheme"] = parsed.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        elif not endpoint:
            options["region"] = pafs.resolve_s3_region(bucket)
        return pafs.S3FileSystem(**options)
    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}/")
    return filesystem


def _prune_cache(cache_dir: Path, keep: Path) -> None:
    cutoff = time.time() - _CACHE_MAX_IDLE_S
    for entry in cache_dir.iterdir():
        with contextlib.suppress(OSError):
            if entry != keep and entry.stat().st_mtime < cutoff:
                entry.unlink()
                log.info("removed idle cached copy %s", entry)
