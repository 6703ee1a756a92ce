"""Fetching product images over HTTP(S), where every failure is a named reject reason.

A catalog's image URLs are untrusted input: a row may point at the cloud metadata service,
at an admin port on the cluster's own network, or at a file a redirect leads elsewhere. So
a URL is fetched only when it lies under one of the policy's prefixes, compared after
normalising (scheme and host case, default ports, ``..`` and ``%2e%2e`` segments); its host is
resolved once, every address is checked (loopback, private, link-local, multicast, reserved,
unspecified, IPv4-mapped IPv6 included), and the connection goes to the address that was
checked, so a second DNS answer (rebinding) never reaches a socket. The Host header and the TLS
server name stay the URL's host, and the certificate is verified. A redirect is followed only
to a place the same checks allow.

The bytes are bounded while they stream (and from Content-Length before any is read), the body
has a total time limit besides the per-read one (a server trickling a byte a second cannot hold
a task), and the servers are treated gently: a token bucket per host shared by the threads of
a process, exponential backoff with jitter, and Retry-After on 429 and 503. Connections are
kept alive per (thread, host), so a batch from one CDN pays for TLS once per thread.

Everything is the standard library (http.client, ssl, socket): a Spark worker needs no more.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import math
import os
import random
import socket
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import quote, urljoin, urlsplit

from lookalike.core.images import ImageRejected

# Reason codes; they are a contract with whoever reads the rejects table.
IMAGE_URL_NOT_ALLOWED = "image_url_not_allowed"
IMAGE_HOST_NOT_ALLOWED = "image_host_not_allowed"
IMAGE_HTTP_TIMEOUT = "image_http_timeout"
IMAGE_HTTP_TOO_LARGE = "image_http_too_large"
IMAGE_HTTP_CONNECTION_ERROR = "image_http_connection_error"
IMAGE_HTTP_TOO_MANY_REDIRECTS = "image_http_too_many_redirects"
IMAGE_HTTP_EMPTY = "image_http_empty"


def http_status_reason(status: int) -> str:
    """The reason code of a final HTTP status that is not an image: ``image_http_<status>``."""
    return f"image_http_{status}"


IMAGE_HTTP_403 = http_status_reason(403)
IMAGE_HTTP_404 = http_status_reason(404)
IMAGE_HTTP_410 = http_status_reason(410)
IMAGE_HTTP_429 = http_status_reason(429)
IMAGE_HTTP_500 = http_status_reason(500)
IMAGE_HTTP_503 = http_status_reason(503)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = (301, 302, 303, 307, 308)
_RETRY_AFTER_STATUSES = (429, 503)
# A detail names the URL, cut to this many characters: a rejects table is read by people.
_URL_IN_DETAIL = 200
_READ_CHUNK = 256 * 1024
# An error or redirect body up to this size is read and dropped so the connection can be
# reused; a larger one costs the connection instead.
_DRAIN_BYTES = 64 * 1024
# Open connections each thread keeps, the least recently used closed first.
_CONNECTIONS_PER_THREAD = 8
# Characters left as they are when a path is percent-encoded for the request line.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class HttpPolicy:
    """Where images may be fetched from over HTTP(S), and how hard the servers may be pushed.

    ``prefixes`` are URL prefixes such as ``https://cdn.shop.example/images/``: only a URL
    under one is fetched, and ``http://`` only under a prefix that says ``http://``. A host
    that resolves to a loopback, private or otherwise internal address is refused, unless the
    matching prefix names that address itself (``http://127.0.0.1:8765/``), names
    ``localhost`` (loopback only), or the host is listed in ``internal_hosts`` (an image
    server on the company network, ``images.internal``).

    ``read_timeout`` bounds each socket read and also the whole response, headers and body;
    ``max_bytes`` is checked from Content-Length and again while the body streams. A 429, a
    5xx, a reset, a refused connection or a timeout is retried ``retries`` times, after
    ``backoff_seconds * 2**n`` with jitter (or the server's Retry-After on 429 and 503), never
    more than ``max_backoff_seconds``. ``per_host_rate`` is requests per second per host (every
    attempt and redirect counts), shared by all threads of the process; ``math.inf`` means no
    limit. ``concurrency`` is the number of threads of fetch_many.
    """

    prefixes: tuple[str, ...]
    max_bytes: int
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    retries: int = 3
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    max_redirects: int = 5
    per_host_rate: float = 20.0
    concurrency: int = 8
    user_agent: str = "lookalike/0.1 (+image similarity batch job)"
    internal_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("prefixes", "internal_hosts"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} must be a sequence, not the string {value!r}")
            # A list from a config file would make the policy unhashable and mutable.
            object.__setattr__(self, name, tuple(value))
        if not self.prefixes:
            raise ValueError("prefixes is empty: no URL could ever be fetched")
        _parsed_prefixes(self.prefixes)  # raises ValueError on a prefix that is no base URL
        object.__setattr__(
            self, "internal_hosts", tuple(_normalise_host(h) for h in self.internal_hosts)
        )
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if not (self.connect_timeout > 0 and self.read_timeout > 0):
            raise ValueError(
                f"timeouts must be positive, got {self.connect_timeout}, {self.read_timeout}"
            )
        if self.retries < 0 or self.max_redirects < 0 or self.concurrency < 1:
            raise ValueError(
                f"retries and max_redirects must be >= 0 and concurrency >= 1, got "
                f"{self.retries}, {self.max_redirects}, {self.concurrency}"
            )
        if not (self.backoff_seconds >= 0 and self.max_backoff_seconds >= 0):
            raise ValueError("backoff_seconds and max_backoff_seconds must be >= 0")
        if not self.per_host_rate > 0:
            raise ValueError(f"per_host_rate must be positive, got {self.per_host_rate}")
        if any(c in self.user_agent for c in "\r\n\0"):
            raise ValueError("user_agent must be one line")


@dataclass(frozen=True)
class Fetched:
    """One image fetched: its bytes on 200, ``data=None`` on 304 (unchanged since the etag).

    ``url`` is the URL asked for, ``final_url`` the one the answer came from after redirects;
    ``attempts`` counts every request made (retries and redirects included), ``bytes_read``
    the body bytes received.
    """

    url: str
    status: int
    data: bytes | None
    etag: str | None
    last_modified: str | None
    bytes_read: int
    attempts: int
    redirects: int = 0
    final_url: str = ""


class HttpRejected(ImageRejected):
    """An ImageRejected from fetching a URL, with what the fetch cost: the URL, the requests
    made (``attempts``, retries and redirects included), and the body bytes received."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        url: str = "",
        attempts: int = 0,
        redirects: int = 0,
        bytes_read: int = 0,
    ) -> None:
        super().__init__(reason, detail)
        self.url = url
        self.attempts = attempts
        self.redirects = redirects
        self.bytes_read = bytes_read

    def __reduce__(self):
        # Picklable (a Spark task may ship it back to the driver): rebuilt from reason and
        # detail, then its counts.
        return (type(self), (self.reason, self.detail), dict(self.__dict__))


@dataclass(frozen=True)
class FetchStats:
    """What a batch of fetches did: images downloaded, unchanged (304), rejects by reason,
    body bytes received, requests made, and how many of those were retries."""

    downloads: int = 0
    not_modified: int = 0
    rejects: Mapping[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    attempts: int = 0
    retries: int = 0

    @classmethod
    def of(cls, items: Sequence[Fetched | ImageRejected]) -> FetchStats:
        rejects: Counter[str] = Counter()
        downloads = not_modified = bytes_read = attempts = retries = 0
        for item in items:
            if isinstance(item, Fetched):
                downloads += item.status == 200
                not_modified += item.status == 304
                cost = (item.attempts, item.redirects, item.bytes_read)
            else:
                rejects[item.reason] += 1
                cost = (
                    getattr(item, "attempts", 0),
                    getattr(item, "redirects", 0),
                    getattr(item, "bytes_read", 0),
                )
            attempts += cost[0]
            bytes_read += cost[2]
            # A redirect is a request but no retry; the first request of each hop is neither.
            retries += max(0, cost[0] - cost[1] - 1)
        return cls(downloads, not_modified, dict(rejects), bytes_read, attempts, retries)


@dataclass(frozen=True)
class FetchResult:
    """fetch_many's answer: one item per request, in the requests' order, and the counts."""

    items: list[Fetched | ImageRejected]
    stats: FetchStats


# --- the public functions ----------------------------------------------------------------------


def fetch(
    url: str, policy: HttpPolicy, *, etag: str | None = None, last_modified: str | None = None
) -> Fetched:
    """Fetch one image, or raise HttpRejected (an ImageRejected) naming why it cannot be had.

    With ``etag`` or ``last_modified`` (from an earlier Fetched), the request is conditional
    and an unchanged image comes back as status 304 with ``data=None``. Connections are kept
    alive per thread between calls; close_connections() closes this process's.
    """
    return _fetch(url, policy, etag, last_modified, _SHARED_CONNECTIONS)


def fetch_many(
    requests: Sequence[tuple[str, str | None, str | None]], policy: HttpPolicy
) -> FetchResult:
    """Fetch ``(url, etag, last_modified)`` requests on ``policy.concurrency`` threads.

    Each item is a Fetched or the ImageRejected its URL earned, in the requests' order; the
    per-host rate limit holds across the threads. The connections opened are closed at the end.
    """
    connections = _Connections()

    def one(request: tuple[str, str | None, str | None]) -> Fetched | ImageRejected:
        url, etag, last_modified = request
        try:
            return _fetch(url, policy, etag, last_modified, connections)
        except ImageRejected as rejected:
            return rejected

    try:
        threads = min(policy.concurrency, len(requests))
        if threads <= 1:
            items = [one(r) for r in requests]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="lookalike-http") as pool:
                items = list(pool.map(one, requests))
    finally:
        connections.close_all()
    return FetchResult(items, FetchStats.of(items))


def close_connections() -> None:
    """Close the kept-alive connections of fetch() (every thread's, in this process)."""
    _SHARED_CONNECTIONS.close_all()


def is_internal_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address no catalog image should live at unless a prefix names it:
    loopback, private, link-local, multicast, reserved, unspecified, shared (CGNAT), and an
    IPv6 address that embeds such an IPv4 address (IPv4-mapped, 6to4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None and is_internal_address(embedded):
            return True
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


# --- URLs and prefixes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str  # as given, for details
    scheme: str
    host: str  # lower case, IDNA, no trailing dot, IPv6 without brackets
    port: int
    path: str  # dot segments removed, percent-encoded: what the request line says
    query: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def request_target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass(frozen=True)
class _Prefix:
    text: str
    scheme: str
    host: str
    port: int
    path: str

    def covers(self, target: _Target, aggressive_path: str) -> bool:
        if target.origin != (self.scheme, self.host, self.port):
            return False
        return _path_under(target.path, self.path) and _path_under(aggressive_path, self.path)


def _short(url: str) -> str:
    return url if len(url) <= _URL_IN_DETAIL else url[: _URL_IN_DETAIL - 3] + "..."


def _normalise_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if not host or "%" in host:
        raise ValueError(f"not a host name: {host!r}")
    if ":" in host:  # an IPv6 literal
        return str(ipaddress.IPv6Address(host))
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as err:
        raise ValueError(f"not a host name: {host!r} ({err})") from None


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 section 5.2.4, on a path that starts with "/".
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _decode_dots(path: str) -> str:
    # "%2e" is "." (an unreserved character): "/images/%2e%2e/private" is "/images/../private".
    return path.replace("%2e", ".").replace("%2E", ".")


def _aggressive_path(path: str) -> str:
    # What a lenient server might make of the path: encoded slashes and backslashes as "/".
    for token in ("%2f", "%2F", "%5c", "%5C", "\\"):
        path = path.replace(token, "/")
    return _remove_dot_segments(path)


def _path_under(path: str, root: str) -> bool:
    return path == root.rstrip("/") or path.startswith(root if root.endswith("/") else root + "/")


def _split(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, path, query) of an http(s) URL, or ValueError saying what is wrong."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("it contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"the scheme {parts.scheme or '(none)'!r} is not http or https")
    if "@" in parts.netloc:
        raise ValueError("it has user information before the host")
    if not parts.hostname:
        raise ValueError("it has no host")
    host = _normalise_host(parts.hostname)
    port = parts.port or _DEFAULT_PORTS[scheme]  # .port raises ValueError on a bad port
    path = quote(_decode_dots(parts.path or "/"), safe=_PATH_SAFE)
    if not path.startswith("/"):
        path = "/" + path
    query = quote(parts.query, safe=_PATH_SAFE + "?")
    return scheme, host, port, _remove_dot_segments(path), query


@lru_cache(maxsize=64)
def _parsed_prefixes(prefixes: tuple[str, ...]) -> tuple[_Prefix, ...]:
    parsed = []
    for text in prefixes:
        try:
            scheme, host, port, path, query = _split(text)
        except ValueError as err:
            raise ValueError(f"prefix {text!r} is not an http(s) base URL: {err}") from None
        if query or "#" in text:
            raise ValueError(f"prefix {text!r} has a query or a fragment")
        parsed.append(_Prefix(text, scheme, host, port, path))
    return tuple(parsed)


def _check_url(url: str, policy: HttpPolicy, *, redirected_from: str | None = None) -> _Target:
    """The target of a URL under one of the policy's prefixes, else IMAGE_URL_NOT_ALLOWED."""
    where = f"redirect from {_short(redirected_from)} to " if redirected_from else ""
    try:
        scheme, host, port, path, query = _split(url)
    except ValueError as err:
        raise ImageRejected(IMAGE_URL_NOT_ALLOWED, f"{where}{_short(url)}: {err}") from None
    target = _Target(url, scheme, host, port, path, query)
    aggressive = _aggressive_path(path)
    prefixes = _parsed_prefixes(policy.prefixes)
    if any(p.covers(target, aggressive) for p in prefixes):
        return target
    if scheme == "http" and not any(p.scheme == "http" for p in prefixes):
        why = "http:// is not allowed (no prefix starts with http://)"
    else:
        why = "outside the allowed prefixes " + ", ".join(p.text for p in prefixes)
    if path != urlsplit(url).path:
        why = f"its path is {path}, " + why
    raise ImageRejected(IMAGE_URL_NOT_ALLOWED, f"{where}{_short(url)}: {why}")


def _allows_internal(target: _Target, policy: HttpPolicy, address: str) -> bool:
    # A prefix that names the address itself, or localhost for a loopback address, or a host
    # the policy lists as internal; a public-looking name that resolves inward never is.
    if target.host in policy.internal_hosts:
        return True
    if target.host == "localhost":
        return ipaddress.ip_address(address).is_loopback
    try:
        return ipaddress.ip_address(target.host) == ipaddress.ip_address(address)
    except ValueError:
        return False


def _resolve(target: _Target, policy: HttpPolicy) -> list[tuple]:
    """The checked addresses of the target's host (getaddrinfo entries), in DNS order."""
    entries = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    if not entries:
        raise socket.gaierror(f"no address for {target.host}")
    for entry in entries:
        address = entry[4][0].split("%", 1)[0]
        if is_internal_address(address) and not _allows_internal(target, policy, address):
            raise ImageRejected(
                IMAGE_HOST_NOT_ALLOWED,
                f"{_short(target.url)}: {target.host} resolves to {address}, an internal "
                "address no prefix names",
            )
    return entries


# --- connections -------------------------------------------------------------------------------


def _connect_any(entries: list[tuple], timeout: float) -> socket.socket:
    last: OSError = OSError("no address")
    for family, kind, proto, _, sockaddr in entries:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as err:
            sock.close()
            last = err
    raise last


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to addresses already checked; the Host header is the URL's host."""

    def __init__(self, host: str, port: int, entries: list[tuple], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._entries = entries

    def connect(self) -> None:
        self.sock = _connect_any(self._entries, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to addresses already checked, verifying the URL host's certificate."""

    def __init__(self, host: str, port: int, entries: list[tuple], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=_tls_context())
        self._entries = entries

    def connect(self) -> None:
        sock = _connect_any(self._entries, self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class _Connections:
    """Kept-alive connections, one per (thread, origin); a connection is taken out while it
    is used and given back when its response was read to the end."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def _mine(self) -> OrderedDict:
        if self._pid != os.getpid():
            # A forked child (a Spark python worker) must not share its parent's sockets.
            self._reset()
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = OrderedDict()
        return conns

    def take(self, origin: tuple) -> http.client.HTTPConnection | None:
        return self._mine().pop(origin, None)

    def add(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.add(conn)

    def give_back(self, origin: tuple, conn: http.client.HTTPConnection) -> None:
        conns = self._mine()
        conns[origin] = conn
        while len(conns) > _CONNECTIONS_PER_THREAD:
            _, oldest = conns.popitem(last=False)
            self.discard(oldest)

    def discard(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)

    def close_all(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()


_SHARED_CONNECTIONS = _Connections()


class _HostThrottle:
    """A token bucket per host (holding one token: requests are spaced 1/rate apart), shared
    by every thread of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[tuple[str, int, float], float] = {}

    def wait(self, host: str, port: int, rate: float) -> None:
        if math.isinf(rate):
            return
        key = (host, port, rate)
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next.get(key, now))
            self._next[key] = start + 1.0 / rate
        if start > now:
            time.sleep(start - now)


_THROTTLE = _HostThrottle()


def _after_fork() -> None:
    # A lock held by another thread at fork time would stay held in the child forever.
    global _THROTTLE
    _THROTTLE = _HostThrottle()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# --- one request -------------------------------------------------------------------------------


@dataclass
class _Progress:
    attempts: int = 0
    redirects: int = 0
    bytes_read: int = 0


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: http.client.HTTPMessage
    data: bytes | None


class _Timeout(TimeoutError):
    """A timeout that says which limit was passed."""


def _exchange(
    conn: http.client.HTTPConnection,
    target: _Target,
    policy: HttpPolicy,
    headers: dict[str, str],
    progress: _Progress,
) -> tuple[_Answer, bool]:
    """One request on conn; the answer, and whether conn may be reused."""
    if conn.sock is None:
        try:
            conn.connect()
        except TimeoutError:
            raise _Timeout(f"connecting took more than {policy.connect_timeout} s") from None
    conn.sock.settimeout(policy.read_timeout)
    deadline = time.monotonic() + policy.read_timeout
    conn.request("GET", target.request_target, headers=headers)
    response = conn.getresponse()
    status = response.status
    if status == 200:
        data = _read_body(conn, response, target, policy, deadline, progress)
        return _Answer(status, response.headers, data), not response.will_close
    if status == 304:
        response.read()
        return _Answer(status, response.headers, None), not response.will_close
    # An error page or a redirect: never kept, read only to free the connection.
    drained = _drain(conn, response, deadline)
    return _Answer(status, response.headers, None), drained and not response.will_close


def _read_body(
    conn: http.client.HTTPConnection,
    response: http.client.HTTPResponse,
    target: _Target,
    policy: HttpPolicy,
    deadline: float,
    progress: _Progress,
) -> bytes:
    declared = _content_length(response)
    if declared is not None and declared > policy.max_bytes:
        raise ImageRejected(
            IMAGE_HTTP_TOO_LARGE,
            f"{_short(target.url)}: Content-Length {declared} is more than {policy.max_bytes} "
            "bytes",
        )
    chunks = []
    received = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout(f"the response took more than {policy.read_timeout} s")
        conn.sock.settimeout(min(policy.read_timeout, remaining))
        # read1: at most one socket read, so the deadline is checked between reads.
        chunk = response.read1(min(_READ_CHUNK, policy.max_bytes + 1 - received))
        if not chunk:
            break
        received += len(chunk)
        progress.bytes_read += len(chunk)
        if received > policy.max_bytes:
            raise ImageRejected(
                IMAGE_HTTP_TOO_LARGE,
                f"{_short(target.url)}: more than {policy.max_bytes} bytes",
            )
        chunks.append(chunk)
    # read1 leaves a response whose length ran out open; read() closes it, so the connection
    # can take the next request.
    response.read()
    return b"".join(chunks)


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.getheader("Content-Length")
    if value is None or response.getheader("Transfer-Encoding"):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _drain(
    conn: http.client.HTTPConnection, response: http.client.HTTPResponse, deadline: float
) -> bool:
    """Read and drop a small body; False when it was too big or too slow to wait for."""
    declared = _content_length(response)
    if declared is not None and declared > _DRAIN_BYTES:
        return False
    received = 0
    try:
        while received <= _DRAIN_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            conn.sock.settimeout(remaining)
            chunk = response.read1(_DRAIN_BYTES)
            if not chunk:
                response.read()
                return True
            received += len(chunk)
    except (OSError, http.client.HTTPException):
        return False
    return False


# Errors of a kept-alive connection the server had already closed: the request is sent again
# on a new connection, and this is no attempt.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _attempt(
    target: _Target,
    policy: HttpPolicy,
    headers: dict[str, str],
    connections: _Connections,
    progress: _Progress,
) -> _Answer:
    conn = connections.take(target.origin)
    reused = conn is not None
    while True:
        if conn is None:
            entries = _resolve(target, policy)
            kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
            conn = kind(target.host, target.port, entries, policy.connect_timeout)
            connections.add(conn)
        try:
            answer, reusable = _exchange(conn, target, policy, headers, progress)
        except _STALE:
            connections.discard(conn)
            if not reused:
                raise
            conn, reused = None, False
            continue
        except BaseException:
            connections.discard(conn)
            raise
        if reusable:
            connections.give_back(target.origin, conn)
        else:
            connections.discard(conn)
        return answer


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), at most cap."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), cap)


def _backoff(policy: HttpPolicy, attempt: int) -> float:
    # Exponential with jitter (between half and all of the step), so workers that failed
    # together do not come back together.
    step = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (attempt - 1))
    return step * random.uniform(0.5, 1.0)


def _with_retries(
    target: _Target,
    policy: HttpPolicy,
    headers: dict[str, str],
    connections: _Connections,
    progress: _Progress,
) -> _Answer:
    """The first answer that is not worth retrying, or ImageRejected after the last attempt."""
    tries = policy.retries + 1
    for attempt in range(1, tries + 1):
        _THROTTLE.wait(target.host, target.port, policy.per_host_rate)
        progress.attempts += 1
        wait = _backoff(policy, attempt)
        try:
            answer = _attempt(target, policy, headers, connections, progress)
        except ImageRejected:
            raise
        except ssl.SSLCertVerificationError as err:
            raise ImageRejected(
                IMAGE_HTTP_CONNECTION_ERROR,
                f"{_short(target.url)}: TLS certificate rejected ({err.verify_message})",
            ) from None
        except TimeoutError as err:
            what = str(err) if isinstance(err, _Timeout) else "timed out reading the response"
            failure = (IMAGE_HTTP_TIMEOUT, what)
        except socket.gaierror as err:
            failure = (IMAGE_HTTP_CONNECTION_ERROR, f"DNS lookup of {target.host} failed ({err})")
        except (OSError, http.client.HTTPException) as err:
            failure = (IMAGE_HTTP_CONNECTION_ERROR, _describe(err))
        else:
            if answer.status != 429 and answer.status < 500:
                return answer
            failure = (http_status_reason(answer.status), f"HTTP {answer.status}")
            if answer.status in _RETRY_AFTER_STATUSES:
                asked = _retry_after(answer.headers.get("Retry-After"), policy.max_backoff_seconds)
                wait = wait if asked is None else asked
        if attempt < tries:
            time.sleep(wait)
    reason, what = failure
    plural = "attempt" if tries == 1 else "attempts"
    raise ImageRejected(reason, f"{_short(target.url)}: {what} after {tries} {plural}")


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _request_headers(policy: HttpPolicy, etag: str | None, last_modified: str | None) -> dict:
    headers = {"User-Agent": policy.user_agent, "Accept": "image/*", "Connection": "keep-alive"}
    # Validators come from an earlier response; one that is not a clean header value is dropped
    # rather than sent (header injection).
    if etag and not any(c in etag for c in "\r\n\0"):
        headers["If-None-Match"] = etag
    if last_modified and not any(c in last_modified for c in "\r\n\0"):
        headers["If-Modified-Since"] = last_modified
    return headers


def _fetch(
    url: str,
    policy: HttpPolicy,
    etag: str | None,
    last_modified: str | None,
    connections: _Connections,
) -> Fetched:
    progress = _Progress()
    try:
        return _follow(url, policy, etag, last_modified, connections, progress)
    except ImageRejected as err:
        raise HttpRejected(
            err.reason,
            err.detail,
            url=url,
            attempts=progress.attempts,
            redirects=progress.redirects,
            bytes_read=progress.bytes_read,
        ) from None


def _follow(
    url: str,
    policy: HttpPolicy,
    etag: str | None,
    last_modified: str | None,
    connections: _Connections,
    progress: _Progress,
) -> Fetched:
    headers = _request_headers(policy, etag, last_modified)
    conditional = "If-None-Match" in headers or "If-Modified-Since" in headers
    target = _check_url(url, policy)
    while True:
        answer = _with_retries(target, policy, headers, connections, progress)
        status = answer.status
        if status in _REDIRECTS:
            location = answer.headers.get("Location")
            if not location:
                raise ImageRejected(
                    http_status_reason(status),
                    f"{_short(target.url)}: HTTP {status} without a Location",
                )
            if progress.redirects >= policy.max_redirects:
                raise ImageRejected(
                    IMAGE_HTTP_TOO_MANY_REDIRECTS,
                    f"{_short(url)}: more than {policy.max_redirects} redirects",
                )
            target = _check_url(
                urljoin(target.url, location.strip()), policy, redirected_from=target.url
            )
            progress.redirects += 1
            continue
        if status == 200 and answer.data:
            return _fetched(url, target, answer, answer.data, etag, last_modified, progress)
        if status == 200:
            raise ImageRejected(IMAGE_HTTP_EMPTY, f"{_short(target.url)}: HTTP 200 with 0 bytes")
        if status == 304 and conditional:
            return _fetched(url, target, answer, None, etag, last_modified, progress)
        raise ImageRejected(http_status_reason(status), f"{_short(target.url)}: HTTP {status}")


def _fetched(
    url: str,
    target: _Target,
    answer: _Answer,
    data: bytes | None,
    etag: str | None,
    last_modified: str | None,
    progress: _Progress,
) -> Fetched:
    # A 304 may leave the validators out; the ones sent are still the image's.
    return Fetched(
        url=url,
        status=answer.status,
        data=data,
        etag=answer.headers.get("ETag") or (etag if data is None else None),
        last_modified=answer.headers.get("Last-Modified")
        or (last_modified if data is None else None),
        bytes_read=progress.bytes_read,
        attempts=progress.attempts,
        redirects=progress.redirects,
        final_url=target.url,
    )
