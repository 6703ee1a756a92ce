"""Fetching images over HTTP: against a real server on 127.0.0.1, every failure a reason code.

The server (tests/http_server.py) serves real JPEGs and records every request, so the tests
also say what the client did NOT ask for: nothing outside the prefixes, nothing twice that
had not changed.
"""

from __future__ import annotations

import ipaddress
import pickle
import shutil
import socket
import ssl
import time

import pytest

from lookalike.core import http_images
from lookalike.core.http_images import (
    IMAGE_HOST_NOT_ALLOWED,
    IMAGE_HTTP_404,
    IMAGE_HTTP_500,
    IMAGE_HTTP_CONNECTION_ERROR,
    IMAGE_HTTP_EMPTY,
    IMAGE_HTTP_TIMEOUT,
    IMAGE_HTTP_TOO_LARGE,
    IMAGE_HTTP_TOO_MANY_REDIRECTS,
    IMAGE_URL_NOT_ALLOWED,
    Fetched,
    FetchResult,
    HttpPolicy,
    HttpRejected,
    fetch,
    fetch_many,
    http_status_reason,
    is_internal_address,
)
from lookalike.core.images import ImageRejected
from tests.http_server import image_server, jpeg_bytes, self_signed_certificate

MAX_BYTES = 1_000_000


@pytest.fixture
def server(tmp_path):
    with image_server(tmp_path) as running:
        yield running
    http_images.close_connections()


def _policy(server, **overrides) -> HttpPolicy:
    options = dict(
        prefixes=(server.url("/images/"),),
        max_bytes=MAX_BYTES,
        retries=3,
        backoff_seconds=0.01,
        max_backoff_seconds=2.0,
        read_timeout=5.0,
        connect_timeout=2.0,
        per_host_rate=1000.0,
    )
    options.update(overrides)
    return HttpPolicy(**options)


def _rejected(url, policy, **kwargs) -> HttpRejected:
    with pytest.raises(ImageRejected) as caught:
        fetch(url, policy, **kwargs)
    assert isinstance(caught.value, HttpRejected)
    return caught.value


# --- fetching and conditional GET ----------------------------------------------------------------


def test_an_allowed_url_gives_its_bytes_and_validators(server):
    data = jpeg_bytes()
    url = server.add_image("/images/a.jpg", data)
    got = fetch(url, _policy(server))
    assert (got.status, got.data, got.attempts, got.bytes_read) == (200, data, 1, len(data))
    assert got.etag and got.etag.startswith('"') and got.last_modified
    seen = server.requests_for("/images/a.jpg")[0]
    assert seen.headers["User-Agent"].startswith("lookalike/")
    assert seen.headers["Host"] == f"127.0.0.1:{server.port}"


def test_a_second_fetch_with_the_etag_is_a_304_without_data(server):
    url = server.add_image("/images/a.jpg", jpeg_bytes())
    policy = _policy(server)
    first = fetch(url, policy)
    again = fetch(url, policy, etag=first.etag, last_modified=first.last_modified)
    assert (again.status, again.data, again.bytes_read) == (304, None, 0)
    assert again.etag == first.etag
    second = server.requests_for("/images/a.jpg")[1]
    assert second.headers["If-None-Match"] == first.etag
    assert second.headers["If-Modified-Since"] == first.last_modified
    # Changed bytes: a new ETag, so the conditional GET downloads.
    server.add_image("/images/a.jpg", jpeg_bytes(colour=(0, 0, 255)))
    changed = fetch(url, policy, etag=first.etag)
    assert changed.status == 200 and changed.etag != first.etag


def test_last_modified_alone_makes_a_conditional_get(server):
    url = server.add_image("/images/a.jpg", jpeg_bytes(), last_modified=time.time() - 3600)
    first = fetch(url, _policy(server))
    again = fetch(url, _policy(server), last_modified=first.last_modified)
    assert again.status == 304 and again.data is None


def test_keep_alive_reuses_one_connection(server):
    urls = [server.add_image(f"/images/{i}.jpg", jpeg_bytes()) for i in range(5)]
    policy = _policy(server)
    for url in urls:
        fetch(url, policy)
    assert len({r.client_port for r in server.requests}) == 1


def test_a_connection_the_server_closed_is_replaced_without_costing_an_attempt(tmp_path):
    with image_server(idle_timeout=0.2) as server:
        urls = [server.add_image(f"/images/{i}.jpg", jpeg_bytes()) for i in range(2)]
        policy = _policy(server)
        fetch(urls[0], policy)
        time.sleep(0.6)  # the server closes the kept-alive connection meanwhile
        again = fetch(urls[1], policy)
        assert again.status == 200 and again.attempts == 1
        assert len({r.client_port for r in server.requests}) == 2
    http_images.close_connections()


# --- https ----------------------------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


@needs_openssl
def test_https_verifies_the_certificate_for_the_url_host(tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path, "localhost")
    trusted = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(http_images, "_tls_context", lambda: trusted)
    with image_server(tls=(cert, key)) as server:
        data = jpeg_bytes()
        server.add_image("/images/a.jpg", data)
        prefix = f"https://localhost:{server.port}/images/"
        got = fetch(prefix + "a.jpg", _policy(server, prefixes=(prefix,)))
        assert got.data == data
        # The same server by its address: the certificate names localhost, not 127.0.0.1.
        prefix = f"https://127.0.0.1:{server.port}/images/"
        rejected = _rejected(prefix + "a.jpg", _policy(server, prefixes=(prefix,)))
        assert rejected.reason == IMAGE_HTTP_CONNECTION_ERROR and rejected.attempts == 1
        assert "certificate" in rejected.detail
    http_images.close_connections()


@needs_openssl
def test_https_refuses_an_untrusted_certificate_without_retrying(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "localhost")
    with image_server(tls=(cert, key)) as server:
        server.add_image("/images/a.jpg", jpeg_bytes())
        prefix = f"https://localhost:{server.port}/images/"
        rejected = _rejected(prefix + "a.jpg", _policy(server, prefixes=(prefix,)))
        assert rejected.reason == IMAGE_HTTP_CONNECTION_ERROR and rejected.attempts == 1
        assert "certificate" in rejected.detail
        assert server.requests == []


# --- status codes and retries ---------------------------------------------------------------------


def test_404_is_image_http_404(server):
    rejected = _rejected(server.url("/images/missing.jpg"), _policy(server))
    assert rejected.reason == IMAGE_HTTP_404 == http_status_reason(404)
    assert rejected.attempts == 1  # a 404 is not retried
    assert "missing.jpg" in rejected.detail and "not found" not in rejected.detail


def test_a_500_then_200_succeeds_on_the_second_attempt(server):
    url = server.add_image("/images/a.jpg", jpeg_bytes())
    server.set_fault("/images/a.jpg", status=500, times=1)
    got = fetch(url, _policy(server))
    assert got.status == 200 and got.attempts == 2
    assert server.hits("/images/a.jpg") == 2


def test_a_500_forever_is_rejected_after_the_retries(server):
    url = server.add_image("/images/a.jpg", jpeg_bytes())
    server.set_fault("/images/a.jpg", status=500)
    rejected = _rejected(url, _policy(server, retries=3))
    assert rejected.reason == IMAGE_HTTP_500
    assert "HTTP 500 after 4 attempts" in rejected.detail
    assert "fault body" not in rejected.detail  # never the response body
    assert server.hits("/images/a.jpg") == 4 == rejected.attempts


def test_429_retry_after_is_honoured(server):
    url = server.add_image("/images/a.jpg", jpeg_bytes())
    server.set_fault("/images/a.jpg", status=429, headers={"Retry-After": "1"}, times=1)
    start = time.monotonic()
    got = fetch(url, _policy(server))
    assert time.monotonic() - start >= 0.9
    assert got.status == 200 and got.attempts == 2


def test_retry_after_as_an_http_date_is_capped():
    assert http_images._retry_after("Wed, 21 Oct 2099 07:28:00 GMT", 3.0) == 3.0
    assert http_images._retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 3.0) == 0.0
    assert http_images._retry_after("120", 30.0) == 30.0
    assert http_images._retry_after("soon", 30.0) is None


def test_a_slow_body_times_out(server):
    url = server.add_image("/images/a.jpg", jpeg_bytes((400, 300)))
    server.set_fault("/images/a.jpg", delay=2.0)
    rejected = _rejected(url, _policy(server, read_timeout=0.4, retries=1))
    assert rejected.reason == IMAGE_HTTP_TIMEOUT
    assert "after 2 attempts" in rejected.detail
    assert server.hits("/images/a.jpg") == 2


def test_a_refused_connection_is_a_connection_error():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    policy = HttpPolicy(
        prefixes=(f"http://127.0.0.1:{port}/",), max_bytes=MAX_BYTES, retries=1, backoff_seconds=0
    )
    rejected = _rejected(f"http://127.0.0.1:{port}/a.jpg", policy)
    assert rejected.reason == IMAGE_HTTP_CONNECTION_ERROR and rejected.attempts == 2


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversize_body_is_refused_without_reading_it(server, chunked):
    size = 64 * 1024 * 1024
    server.add_image("/images/big.jpg", jpeg_bytes())
    server.set_fault("/images/big.jpg", body_size=size, chunked=chunked)
    limit = 200_000
    rejected = _rejected(server.url("/images/big.jpg"), _policy(server, max_bytes=limit))
    assert rejected.reason == IMAGE_HTTP_TOO_LARGE
    assert str(limit) in rejected.detail
    assert rejected.attempts == 1
    # Content-Length is refused before the body; a chunked body is cut just past the limit.
    assert rejected.bytes_read == (0 if not chunked else rejected.bytes_read)
    assert rejected.bytes_read <= limit + 1
    # The client hung up: the server could not write all 64 MB.
    (seen,) = server.requests_for("/images/big.jpg")
    deadline = time.monotonic() + 5
    while not seen.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not seen.completed and seen.bytes_sent < size


def test_a_0_byte_image_is_image_http_empty(server):
    url = server.add_image("/images/a.jpg", jpeg_bytes())
    server.set_fault("/images/a.jpg", empty=True)
    assert _rejected(url, _policy(server)).reason == IMAGE_HTTP_EMPTY


# --- redirects ------------------------------------------------------------------------------------


def test_a_redirect_within_the_prefix_is_followed(server):
    data = jpeg_bytes()
    server.add_image("/images/new.jpg", data)
    server.add_image("/images/old.jpg", b"unused")
    server.set_fault("/images/old.jpg", status=301, location="/images/sub/../new.jpg")
    got = fetch(server.url("/images/old.jpg"), _policy(server))
    assert got.data == data and got.redirects == 1 and got.attempts == 2
    assert got.url == server.url("/images/old.jpg")
    assert got.final_url == server.url("/images/new.jpg")


@pytest.mark.parametrize(
    "location",
    ["/private/secret.jpg", "http://localhost:{port}/images/a.jpg", "https://evil.example/x.jpg"],
)
def test_a_redirect_out_of_the_prefixes_is_refused_and_not_followed(server, location):
    server.add_image("/private/secret.jpg", jpeg_bytes())
    server.add_image("/images/old.jpg", b"unused")
    location = location.format(port=server.port)
    server.set_fault("/images/old.jpg", status=302, location=location)
    rejected = _rejected(server.url("/images/old.jpg"), _policy(server))
    assert rejected.reason == IMAGE_URL_NOT_ALLOWED
    assert "redirect from" in rejected.detail
    assert [r.path for r in server.requests] == ["/images/old.jpg"]


def test_a_redirect_loop_is_too_many_redirects(server):
    server.add_image("/images/loop.jpg", b"unused")
    server.set_fault("/images/loop.jpg", status=307, location="/images/loop.jpg")
    rejected = _rejected(server.url("/images/loop.jpg"), _policy(server, max_redirects=3))
    assert rejected.reason == IMAGE_HTTP_TOO_MANY_REDIRECTS
    assert server.hits("/images/loop.jpg") == 4


# --- where images may come from -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/private/secret.jpg",
        "/images/../private/secret.jpg",
        "/images/%2e%2e/private/secret.jpg",
        "/images/%2E%2E/%2e%2E/private/secret.jpg",
        "/images/..%2fprivate/secret.jpg",
        "/imagesX/secret.jpg",
    ],
)
def test_a_url_outside_the_prefixes_is_never_requested(server, path):
    server.add_image("/private/secret.jpg", jpeg_bytes())
    rejected = _rejected(server.base_url + path, _policy(server))
    assert rejected.reason == IMAGE_URL_NOT_ALLOWED and rejected.attempts == 0
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/images/a.jpg",
        "file:///etc/passwd",
        "https://127.0.0.1:{port}/images/a.jpg",
        "http://user@127.0.0.1:{port}/images/a.jpg",
        "http://localhost:{port}/images/a.jpg",
        "http://127.0.0.1:1/images/a.jpg",
    ],
)
def test_other_schemes_hosts_and_ports_are_not_allowed(server, url):
    rejected = _rejected(url.format(port=server.port), _policy(server))
    assert rejected.reason == IMAGE_URL_NOT_ALLOWED
    assert server.requests == []


def test_http_needs_a_prefix_that_says_http():
    policy = HttpPolicy(prefixes=("https://cdn.shop.example/images/",), max_bytes=10)
    rejected = _rejected("http://cdn.shop.example/images/a.jpg", policy)
    assert rejected.reason == IMAGE_URL_NOT_ALLOWED and "http://" in rejected.detail


def test_prefixes_compare_after_normalising_case_and_default_ports():
    policy = HttpPolicy(prefixes=("HTTPS://CDN.Shop.Example:443/images",), max_bytes=10)
    target = http_images._check_url("https://cdn.shop.example./images/a/./b.jpg?w=1", policy)
    assert (target.host, target.port, target.request_target) == (
        "cdn.shop.example",
        443,
        "/images/a/b.jpg?w=1",
    )


def _fake_dns(monkeypatch, answers: dict[str, list[str]]):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["93.184.215.14", "127.0.0.1"], ["::ffff:127.0.0.1"], ["169.254.169.254"]],
    ids=["loopback", "one-of-two", "ipv4-mapped", "metadata"],
)
def test_a_name_that_resolves_inward_is_refused_without_a_request(server, monkeypatch, addresses):
    _fake_dns(monkeypatch, {"cdn.example.test": addresses})
    server.add_image("/images/a.jpg", jpeg_bytes())
    prefix = f"http://cdn.example.test:{server.port}/images/"
    policy = _policy(server, prefixes=(prefix,))
    rejected = _rejected(prefix + "a.jpg", policy)
    assert rejected.reason == IMAGE_HOST_NOT_ALLOWED
    assert addresses[-1] in rejected.detail
    assert server.requests == []


def test_an_internal_host_listed_in_the_policy_is_fetched_with_its_host_header(server, monkeypatch):
    _fake_dns(monkeypatch, {"cdn.example.test": ["127.0.0.1"]})
    data = jpeg_bytes()
    server.add_image("/images/a.jpg", data)
    prefix = f"http://cdn.example.test:{server.port}/images/"
    policy = _policy(server, prefixes=(prefix,), internal_hosts=("CDN.example.test",))
    assert fetch(prefix + "a.jpg", policy).data == data
    (seen,) = server.requests
    assert seen.headers["Host"] == f"cdn.example.test:{server.port}"


def test_the_address_checked_is_the_address_connected_to(server, monkeypatch):
    # DNS rebinding: a second lookup would answer otherwise; there is none.
    calls = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        calls.append(host)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    url = server.add_image("/images/a.jpg", jpeg_bytes())
    fetch(url, _policy(server))
    assert calls == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("100.64.0.1", True),
        ("169.254.169.254", True),
        ("224.0.0.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("::ffff:10.0.0.1", True),
        ("2002:7f00:1::", True),
        ("93.184.215.14", False),
        ("2606:4700::1111", False),
    ],
)
def test_internal_addresses(address, internal):
    assert is_internal_address(address) is internal
    if "%" not in address:
        assert is_internal_address(ipaddress.ip_address(address)) is internal


def test_a_reject_names_a_long_url_shortened_and_survives_pickling():
    policy = HttpPolicy(prefixes=("https://cdn.shop.example/images/",), max_bytes=10)
    url = "https://elsewhere.example/" + "x" * 500
    rejected = _rejected(url, policy)
    assert len(rejected.detail) < 400 and "..." in rejected.detail
    copy = pickle.loads(pickle.dumps(rejected))
    assert isinstance(copy, HttpRejected)
    assert (copy.reason, copy.detail, copy.url, copy.attempts) == (
        rejected.reason,
        rejected.detail,
        url,
        0,
    )


def test_the_policy_refuses_bad_settings():
    with pytest.raises(ValueError):
        HttpPolicy(prefixes=(), max_bytes=10)
    with pytest.raises(ValueError):
        HttpPolicy(prefixes=("s3://bucket/images/",), max_bytes=10)
    with pytest.raises(TypeError):
        HttpPolicy(prefixes="https://cdn.shop.example/", max_bytes=10)
    with pytest.raises(ValueError):
        HttpPolicy(prefixes=("https://cdn.shop.example/",), max_bytes=10, per_host_rate=0)


# --- many at once ---------------------------------------------------------------------------------


def test_fetch_many_keeps_the_order_and_counts(server):
    data = {i: jpeg_bytes(colour=(i * 20, 0, 0)) for i in range(6)}
    urls = {i: server.add_image(f"/images/{i}.jpg", d) for i, d in data.items()}
    server.set_fault("/images/5.jpg", status=500, times=1)
    policy = _policy(server, concurrency=4)
    first = fetch(urls[0], policy)
    requests = [
        (urls[0], first.etag, None),  # unchanged: 304
        (urls[1], None, None),
        (server.url("/images/missing.jpg"), None, None),
        (urls[2], None, None),
        (server.url("/private/x.jpg"), None, None),
        (urls[3], None, None),
        (urls[4], None, None),
        (urls[5], None, None),  # 500 then 200: one retry
    ]
    result = fetch_many(requests, policy)
    assert isinstance(result, FetchResult)
    items = result.items
    assert [getattr(i, "status", None) for i in items] == [304, 200, None, 200, None, 200, 200, 200]
    assert [i.data for i in items if isinstance(i, Fetched) and i.status == 200] == [
        data[1],
        data[2],
        data[3],
        data[4],
        data[5],
    ]
    assert items[2].reason == IMAGE_HTTP_404 and items[4].reason == IMAGE_URL_NOT_ALLOWED
    stats = result.stats
    assert (stats.downloads, stats.not_modified, stats.retries) == (5, 1, 1)
    assert stats.rejects == {IMAGE_HTTP_404: 1, IMAGE_URL_NOT_ALLOWED: 1}
    assert stats.bytes_read == sum(len(data[i]) for i in range(1, 6))
    assert stats.attempts == 8  # 6 images + the retry + the 404


def test_a_second_pass_makes_conditional_requests_and_downloads_nothing(server):
    urls = [server.add_image(f"/images/{i}.jpg", jpeg_bytes(colour=(i, i, i))) for i in range(8)]
    policy = _policy(server, concurrency=4)
    first = fetch_many([(u, None, None) for u in urls], policy)
    assert first.stats.downloads == 8
    server.clear_log()
    second = fetch_many([(f.url, f.etag, f.last_modified) for f in first.items], policy)
    assert (second.stats.downloads, second.stats.not_modified, second.stats.bytes_read) == (0, 8, 0)
    assert len(server.requests) == 8
    assert all("If-None-Match" in r.headers and r.status == 304 for r in server.requests)


def test_the_per_host_rate_limits_the_threads_together(server):
    urls = [server.add_image(f"/images/{i}.jpg", jpeg_bytes()) for i in range(10)]
    policy = _policy(server, concurrency=4, per_host_rate=20.0)
    start = time.monotonic()
    result = fetch_many([(u, None, None) for u in urls], policy)
    elapsed = time.monotonic() - start
    assert result.stats.downloads == 10
    assert elapsed >= 0.4  # 10 requests spaced 1/20 s apart: at least 9 gaps of 50 ms
