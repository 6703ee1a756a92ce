"""The review app over a real uvicorn server and real Delta tables: who may write, what a
decision writes, what bad input gets (a 4xx and no write), pages, filters and thumbnails."""

from __future__ import annotations

import html
import json
import logging
import re
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from lookalike import tables
from lookalike.serve.auth import add_reviewer
from lookalike.serve.synthetic import publish_tables, synthetic_tables
from tests.serve.published import N_SKUS, RUN_A, make_app
from tests.serve.server import Client, running

HOSTILE_TITLE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'


@pytest.fixture
def reviewers(tmp_path, monkeypatch):
    path = tmp_path / "secrets" / "reviewers"
    path.parent.mkdir()
    tokens = {name: add_reviewer(path, name) for name in ("ann", "bob")}
    monkeypatch.setenv("LOOKALIKE_REVIEWERS_FILE", str(path))
    return tokens


@pytest.fixture
def shop(tmp_path):
    """A published run whose listings have real photos and one hostile title."""
    root = tmp_path / "output"
    data = synthetic_tables(N_SKUS, 10, RUN_A, n_categories=20)
    photos = tmp_path / "photos"
    photos.mkdir()
    uris = []
    for i, sku in enumerate(data["catalog"]["sku_id"].to_pylist()):
        if i < 80:  # the clusters' and mismatches' listings and their neighbours
            path = photos / f"{sku}.jpg"
            Image.new("RGB", (320, 240), (i * 3 % 256, 90, 200)).save(path)
            uris.append(str(path))
        else:
            uris.append(str(photos / "missing.jpg"))
    catalog = data["catalog"]
    catalog = catalog.set_column(
        catalog.schema.get_field_index("image_uri"), "image_uri", pa.array(uris)
    )
    titles = catalog["title"].to_pylist()
    titles[20] = HOSTILE_TITLE  # SKU-020: a member of cluster dup-000000000000
    data["catalog"] = catalog.set_column(
        catalog.schema.get_field_index("title"), "title", pa.array(titles)
    )
    publish_tables(root, RUN_A, data)
    return root


def reviews_table(root):
    return root / "tables" / "duplicate_reviews"


def review_rows(root, name="duplicate_reviews") -> list[dict]:
    path = root / "tables" / name
    return tables.read_table(path).to_pylist() if tables.is_table(path) else []


def sign_in(client: Client, name: str, token: str):
    page = client.get("/review/login")
    login_token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    return client.post_form(
        "/review/login", {"login_token": login_token, "name": name, "token": token}
    )


def csrf_of(client: Client, path="/review/duplicates") -> str:
    page = client.get(path)
    assert page.status == 200, page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_a_signed_in_reviewer_records_a_decision_with_name_and_time(
    shop, tmp_path, reviewers, caplog
):
    with running(make_app(shop, tmp_path)) as client:
        signed = sign_in(client, "ann", reviewers["ann"])
        assert signed.status == 303 and "lookalike_session" in client.cookies
        (session,) = [c.lower() for c in signed.set_cookies if c.startswith("lookalike_session=")]
        assert "samesite=strict" in session and "httponly" in session
        csrf = csrf_of(client)
        with caplog.at_level(logging.INFO, logger="lookalike.serve.audit"):
            answer = client.post_form(
                "/review/duplicates/decide",
                {
                    "csrf": csrf,
                    "cluster_id": "dup-000000000000",
                    "sku_id": "SKU-020",
                    "decision": "not_duplicate",
                    "back": "/review/duplicates?page=1",
                },
            )
        assert answer.status == 303 and answer.headers["location"] == "/review/duplicates?page=1"
        page = client.get("/review/duplicates")
        assert "not_duplicate by ann" in page.text
    rows = review_rows(shop)
    assert [(r["sku_id_a"], r["sku_id_b"], r["decision"], r["reviewer"]) for r in rows] == [
        ("SKU-000", "SKU-020", "not_duplicate", "ann")
    ]
    assert rows[0]["decided_at"] is not None
    audit = [json.loads(r.message) for r in caplog.records if r.name == "lookalike.serve.audit"]
    assert audit[-1]["reviewer"] == "ann" and audit[-1]["sku_ids"] == ["SKU-000", "SKU-020"]


def test_canonical_and_mismatch_decisions(shop, tmp_path, reviewers):
    with running(make_app(shop, tmp_path)) as client:
        sign_in(client, "bob", reviewers["bob"])
        csrf = csrf_of(client)
        made = client.post_form(
            "/review/duplicates/decide",
            {
                "csrf": csrf,
                "cluster_id": "dup-000000000001",
                "sku_id": "SKU-021",
                "decision": "canonical",
            },
        )
        assert made.status == 303
        csrf = csrf_of(client, "/review/mismatches")
        flagged = client.post_form(
            "/review/mismatches/decide",
            {"csrf": csrf, "sku_id": "SKU-050", "decision": "category_ok"},
        )
        assert flagged.status == 303
    assert [(r["sku_id_a"], r["sku_id_b"], r["decision"]) for r in review_rows(shop)] == [
        ("SKU-021", "SKU-021", "canonical")
    ]
    (row,) = review_rows(shop, "mismatch_reviews")
    assert (row["sku_id"], row["category"], row["suggested_category"], row["decision"]) == (
        "SKU-050",
        "category-010",
        "category-011",
        "category_ok",
    )
    assert row["reviewer"] == "bob"


def test_writes_without_a_reviewer_are_refused_and_write_nothing(shop, tmp_path, reviewers):
    decision = {"cluster_id": "dup-000000000000", "sku_id": "SKU-020", "decision": "not_duplicate"}
    with running(make_app(shop, tmp_path)) as client:
        assert client.post_form("/review/duplicates/decide", decision).status == 401
        bad_bearer = client.post_form(
            "/review/duplicates/decide", decision, headers={"Authorization": "Bearer forged"}
        )
        assert bad_bearer.status == 401
        assert sign_in(client, "ann", "not-her-token").status == 401
        assert "lookalike_session" not in client.cookies
        # Signed in, but the form lacks its CSRF token, or comes from another site.
        sign_in(client, "ann", reviewers["ann"])
        assert client.post_form("/review/duplicates/decide", decision).status == 403
        csrf = csrf_of(client)
        cross = client.post_form(
            "/review/duplicates/decide",
            {**decision, "csrf": csrf},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status == 403 and "another site" in cross.text
        forged = client.post_form("/review/duplicates/decide", {**decision, "csrf": "0" * 64})
        assert forged.status == 403
    assert not tables.is_table(reviews_table(shop))


def test_bad_decisions_get_a_clear_4xx_and_write_nothing(shop, tmp_path, reviewers):
    bearer = {"Authorization": f"Bearer {reviewers['ann']}"}
    cases = [
        (
            {"cluster_id": "dup-nope", "sku_id": "SKU-020", "decision": "confirmed"},
            404,
            "no duplicate cluster",
        ),
        (
            {"cluster_id": "dup-000000000000", "sku_id": "SKU-300", "decision": "confirmed"},
            400,
            "not a member",
        ),
        (
            {
                "cluster_id": "dup-000000000000",
                "sku_id": "../../etc/passwd",
                "decision": "confirmed",
            },
            400,
            "not a member",
        ),
        (
            {"cluster_id": "dup-000000000000", "sku_id": "SKU-000", "decision": "confirmed"},
            400,
            "canonical listing",
        ),
        (
            {"cluster_id": "dup-000000000000", "sku_id": "SKU-020", "decision": "delete_all"},
            400,
            "must be one of",
        ),
        ({"cluster_id": "dup-000000000000", "decision": "confirmed"}, 400, "sku_id"),
        (
            {"cluster_id": "dup-000000000000", "sku_id": "S" * 5000, "decision": "confirmed"},
            400,
            "at most",
        ),
    ]
    with running(make_app(shop, tmp_path)) as client:
        for fields, status, reason in cases:
            answer = client.post_form("/review/duplicates/decide", fields, headers=bearer)
            assert answer.status == status, fields
            assert reason in html.unescape(answer.text), (fields, answer.text[-400:])
        wrong_kind = client.request(
            "POST",
            "/review/duplicates/decide",
            b'{"sku_id": "SKU-020"}',
            {"Content-Type": "application/json", **bearer},
        )
        assert wrong_kind.status == 415
        not_flagged = client.post_form(
            "/review/mismatches/decide",
            {"sku_id": "SKU-001", "decision": "wrong_category"},
            headers=bearer,
        )
        assert not_flagged.status == 404
        # A bearer client's good decision: 201 and the record.
        ok = client.post_form(
            "/review/duplicates/decide",
            {"cluster_id": "dup-000000000002", "sku_id": "SKU-022", "decision": "confirmed"},
            headers=bearer,
        )
        assert ok.status == 201 and ok.json()["recorded"]["reviewer"] == "ann"
    assert [(r["sku_id_a"], r["decision"]) for r in review_rows(shop)] == [("SKU-002", "confirmed")]
    assert review_rows(shop, "mismatch_reviews") == []


def test_two_reviewers_deciding_at_once_lose_nothing(shop, tmp_path, reviewers):
    with running(make_app(shop, tmp_path)) as client:
        port = client.port
        barrier = threading.Barrier(2)
        results: dict[str, list[int]] = {}

        def decide(name: str, members: list[tuple[str, str]]) -> None:
            bearer = {"Authorization": f"Bearer {reviewers[name]}"}
            own = Client(port)
            barrier.wait()
            results[name] = [
                own.post_form(
                    "/review/duplicates/decide",
                    {"cluster_id": cluster, "sku_id": sku, "decision": "confirmed"},
                    headers=bearer,
                ).status
                for cluster, sku in members
            ]

        ann = [(f"dup-{c:012d}", f"SKU-{c + 20:03d}") for c in range(0, 10, 2)] * 2
        bob = [(f"dup-{c:012d}", f"SKU-{c + 20:03d}") for c in range(1, 10, 2)] * 2
        threads = [threading.Thread(target=decide, args=a) for a in (("ann", ann), ("bob", bob))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {"ann": [201] * 10, "bob": [201] * 10}
    rows = review_rows(shop)
    assert len(rows) == 20
    assert sorted(r["reviewer"] for r in rows) == ["ann"] * 10 + ["bob"] * 10


def test_pages_filter_paginate_and_show_seller_text_as_text(shop, tmp_path, reviewers):
    with running(make_app(shop, tmp_path, page_size=4, max_page_size=50)) as client:
        first = client.get("/review/duplicates")
        assert first.status == 200
        for header in ("content-security-policy", "x-frame-options", "x-content-type-options"):
            assert header in first.headers
        assert "script-src" not in first.headers["content-security-policy"]  # none allowed
        assert first.text.count('class="cluster"') == 4 and "10 found, page 1 of 3" in first.text
        last = client.get("/review/duplicates?page=3")
        assert last.text.count('class="cluster"') == 2
        # The hostile title is escaped: no tag of it reaches the page.
        assert "<script>alert" not in first.text and "<img src=x" not in first.text
        assert "&lt;script&gt;alert(" in first.text and "onerror=alert(1)&gt; &amp;" in first.text
        by_sku = client.get("/review/duplicates?sku=SKU-025")
        assert by_sku.text.count('class="cluster"') == 1 and "dup-000000000005" in by_sku.text
        by_category = client.get("/review/duplicates?category=category-003")
        assert by_category.text.count('class="cluster"') == 1
        by_evidence = client.get("/review/duplicates?evidence=embedding&page_size=50")
        assert by_evidence.text.count('class="cluster"') == 5
        confident = client.get("/review/duplicates?min_confidence=0.955&page_size=50")
        assert confident.text.count('class="cluster"') == 2  # min_score 0.97, 0.96
        for bad in ("page_size=51", "page=0", "page=x", "min_confidence=2", "min_confidence=nan"):
            assert client.get(f"/review/duplicates?{bad}").status == 400, bad
        mismatches = client.get("/review/mismatches?page_size=50")
        assert mismatches.text.count('class="mismatch"') == 10
        # Not signed in: no decision buttons.
        assert "/review/duplicates/decide" not in first.text
        sign_in(client, "ann", reviewers["ann"])
        assert "/review/duplicates/decide" in client.get("/review/duplicates").text


def test_thumbnails_come_from_the_published_catalog_only(shop, tmp_path):
    with running(make_app(shop, tmp_path)) as client:
        thumb = client.get("/review/thumb/SKU-020")
        assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"
        import io

        with Image.open(io.BytesIO(thumb.body)) as image:
            assert max(image.size) == 160
        assert client.get("/review/thumb/SKU-599").status == 404  # not on a review page
        assert client.get("/review/thumb/..%2F..%2Fetc%2Fpasswd").status == 404
        assert client.get("/review/thumb/%2Fetc%2Fpasswd").status == 404


def test_with_read_access_token_the_pages_need_a_reviewer(shop, tmp_path, reviewers):
    with running(make_app(shop, tmp_path, read_access="token")) as client:
        assert client.get("/review/duplicates").status == 401
        sign_in(client, "ann", reviewers["ann"])
        assert client.get("/review/duplicates").status == 200


def test_without_reviewers_the_app_is_read_only(shop, tmp_path, monkeypatch):
    monkeypatch.delenv("LOOKALIKE_REVIEWERS_FILE", raising=False)
    with running(make_app(shop, tmp_path)) as client:
        assert client.get("/review/duplicates").status == 200
        assert "No reviewers are configured" in client.get("/review/login").text
        refused = client.post_form(
            "/review/duplicates/decide",
            {"cluster_id": "dup-000000000000", "sku_id": "SKU-020", "decision": "confirmed"},
            headers={"Authorization": "Bearer anything"},
        )
        assert refused.status == 401
    assert not tables.is_table(reviews_table(shop))


def test_the_synthetic_run_has_what_these_tests_assume(shop):
    clusters = tables.read_table(shop / "tables" / "duplicate_clusters")
    assert pc.count_distinct(clusters["cluster_id"]).as_py() == 10
    assert tables.read_table(shop / "tables" / "category_mismatches").num_rows == 10
