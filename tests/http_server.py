"""A real HTTP image server on 127.0.0.1 for tests: real sockets, real JPEGs, programmable faults.

    with image_server() as server:
        server.add_image("/images/a.jpg", jpeg_bytes())
        server.set_fault("/images/b.jpg", status=500, times=1)   # 500 once, then the image
        url = server.url("/images/a.jpg")
        ...
        assert server.hits("/images/b.jpg") == 2

Images get a strong ETag (from their bytes) and a Last-Modified, and conditional GETs
(If-None-Match, If-Modified-Since) get 304. Every request is recorded (method, path, headers,
client port), so a test can say what was and was not asked for. A folder given to
image_server() is served too (``/<relative path>``), for benchmarks over files on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

_CHUNK = 64 * 1024


def jpeg_bytes(
    size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    """A real JPEG made with PIL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Fault:
    """How a path misbehaves. ``times`` limits it to the first N hits, then the path serves its
    image as usual; None means forever.

    status: answer with this status (a short text body), plus ``headers`` (Retry-After...);
    location: with a 30x status, where to.
    delay: send the headers and half the body, sleep this long, then the rest.
    body_size: serve this many filler bytes instead of the image; ``chunked`` sends them with
    Transfer-Encoding: chunked and no Content-Length.
    empty: 200 with a 0-byte body.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    location: str | None = None
    delay: float = 0.0
    body_size: int | None = None
    chunked: bool = False
    empty: bool = False
    times: int | None = None


@dataclass
class Recorded:
    """One request the server received, logged as it arrives; status, bytes_sent and
    completed (the whole answer was written) are filled in once the answer is over (done)."""

    method: str
    path: str
    headers: dict[str, str]
    client_port: int
    status: int = 0
    bytes_sent: int = 0
    completed: bool = False
    done: bool = False


@dataclass
class _Image:
    data: bytes
    etag: str
    last_modified: str


class ImageServer:
    """The server's state; see the module docstring."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        tls: tuple[Path, Path] | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        self.root = root
        self._images: dict[str, _Image] = {}
        self._faults: dict[str, Fault] = {}
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self, idle_timeout))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return self.base_url + path

    def add_image(self, path: str, data: bytes, *, last_modified: float | None = None) -> str:
        """Serve data at path (with a new ETag when data changes); its URL."""
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        when = formatdate(time.time() if last_modified is None else last_modified, usegmt=True)
        with self._lock:
            self._images[path] = _Image(data, etag, when)
        return self.url(path)

    def set_fault(self, path: str, fault: Fault | None = None, **options) -> None:
        """Make path misbehave (a Fault, or its fields as keywords); None clears it."""
        with self._lock:
            if fault is None and not options:
                self._faults.pop(path, None)
            else:
                self._faults[path] = fault or Fault(**options)

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits.get(path, 0)

    def requests_for(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self._hits.clear()

    # -- used by the handler --

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def _begin(self, path: str) -> tuple[Fault | None, _Image | None]:
        with self._lock:
            self._hits[path] = hit = self._hits.get(path, 0) + 1
            fault = self._faults.get(path)
            if fault is not None and fault.times is not None and hit > fault.times:
                fault = None
            image = self._images.get(path)
        if image is None and self.root is not None:
            image = self._from_disk(path)
        return fault, image

    def _from_disk(self, path: str) -> _Image | None:
        root = self.root.resolve()
        file = (root / path.lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return None
        stat = file.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        return _Image(file.read_bytes(), etag, formatdate(stat.st_mtime, usegmt=True))

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client hanging up (a refused oversize body, a closed kept-alive connection) is
        # what the tests do on purpose; anything else is still printed.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | ssl.SSLError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def image_server(root: Path | None = None, **options) -> Iterator[ImageServer]:
    """A running ImageServer on 127.0.0.1 (a free port), stopped at the end; options are
    ImageServer's (tls=(certfile, keyfile), idle_timeout=seconds)."""
    with ImageServer(root, **options) as server:
        yield server


def self_signed_certificate(folder: Path, host: str = "localhost") -> tuple[Path, Path]:
    """(certfile, keyfile) of a new self-signed certificate for host, made with the openssl
    command; a test without openssl on the PATH should skip."""
    cert, key = folder / f"{host}.crt", folder / f"{host}.key"
    san = f"IP:{host}" if host.replace(".", "").isdigit() else f"DNS:{host}"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", f"/CN={host}", "-addext", f"subjectAltName={san}"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def _not_modified(image: _Image, headers) -> bool:
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        tags = [t.strip() for t in if_none_match.split(",")]
        return "*" in tags or image.etag in tags
    since = headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        return parsedate_to_datetime(image.last_modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False


def _handler_for(server: ImageServer, idle_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies
        timeout = idle_timeout  # an idle kept-alive connection is closed after this long

        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            recorded = Recorded(
                "GET", self.path, dict(self.headers.items()), self.client_address[1]
            )
            server._record(recorded)
            fault, image = server._begin(path)
            self._recorded = recorded
            try:
                self._answer(fault, image)
                recorded.completed = True
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                recorded.done = True

        def _answer(self, fault: Fault | None, image: _Image | None) -> None:
            if fault is not None and fault.status is not None:
                headers = dict(fault.headers)
                if fault.location is not None:
                    headers["Location"] = fault.location
                return self._send(fault.status, b"fault body: not an image\n", headers)
            if image is None:
                return self._send(404, b"not found\n", {})
            if fault is not None and fault.empty:
                return self._send(200, b"", {"Content-Type": "image/jpeg"})
            if fault is not None and fault.body_size is not None:
                return self._filler(fault)
            validators = {"ETag": image.etag, "Last-Modified": image.last_modified}
            if _not_modified(image, self.headers):
                return self._send(304, None, validators)
            headers = {"Content-Type": "image/jpeg", **validators}
            delay = fault.delay if fault is not None else 0.0
            return self._send(200, image.data, headers, delay=delay)

        def _send(self, status: int, body: bytes | None, headers: dict, delay: float = 0.0):
            self._recorded.status = status
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not body:
                return
            half = len(body) // 2 if delay else len(body)
            self._write(body[:half])
            if delay:
                self.wfile.flush()
                time.sleep(delay)
                self._write(body[half:])

        def _filler(self, fault: Fault) -> None:
            self._recorded.status = 200
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if fault.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(fault.body_size))
            self.end_headers()
            left = fault.body_size
            block = b"\xff" * _CHUNK
            while left > 0:
                piece = block[: min(_CHUNK, left)]
                if fault.chunked:
                    self.wfile.write(f"{len(piece):x}\r\n".encode())
                    self._write(piece)
                    self.wfile.write(b"\r\n")
                else:
                    self._write(piece)
                left -= len(piece)
            if fault.chunked:
                self.wfile.write(b"0\r\n\r\n")

        def _write(self, data: bytes) -> None:
            self.wfile.write(data)
            self._recorded.bytes_sent += len(data)

    return Handler
