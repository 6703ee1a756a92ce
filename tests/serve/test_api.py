"""The storefront API over a real uvicorn server: answers, errors, caching, access, swaps."""

from __future__ import annotations

import threading
from urllib.parse import quote

import pytest

from lookalike import tables
from lookalike.serve.app import create_app
from lookalike.serve.synthetic import publish_tables, synthetic_tables
from tests.serve.published import N_SKUS, RUN_A, make_app, make_service
from tests.serve.server import running


def expected_similar(data, k: int = 10) -> dict[str, list[dict]]:
    """sku -> what /v1/similar must answer, from the published rows themselves."""
    rows = data["similar_items"].sort_by([("sku_id", "ascending"), ("rank", "ascending")])
    out: dict[str, list[dict]] = {}
    for r in rows.to_pylist():
        if len(out.setdefault(r["sku_id"], [])) < k:
            out[r["sku_id"]].append(
                {
                    "sku_id": r["similar_sku_id"],
                    "rank": r["rank"],
                    "score": round(float(r["score"]), 6),
                    "category": r["category"],
                    "model_id": r["model_id"],
                }
            )
    return out


def test_similar_items_answer_what_the_run_published(published, tmp_path):
    data = synthetic_tables(N_SKUS, 10, RUN_A, n_categories=20)
    want = expected_similar(data, k=4)
    with running(make_app(published, tmp_path)) as client:
        for sku in ("SKU-000", "SKU-123", "SKU-599"):
            answer = client.get(f"/v1/similar/{sku}?k=4")
            assert answer.status == 200
            body = answer.json()
            assert body["sku_id"] == sku and body["run_id"] == RUN_A
            assert body["similar"] == want[sku]
        assert len(client.get("/v1/similar/SKU-010").json()["similar"]) == 10  # the default k


def test_errors_are_json_with_a_reason_and_the_right_status(published, tmp_path):
    with running(make_app(published, tmp_path, max_k=50)) as client:
        cases = {
            "/v1/similar/SKU-999999": 404,
            "/v1/similar/SKU-001?k=0": 400,
            "/v1/similar/SKU-001?k=51": 400,
            "/v1/similar/SKU-001?k=ten": 400,
            "/v1/similar/" + quote("../../etc/passwd", safe=""): 404,
            "/v1/similar/SKU-001%00": 404,
            "/v1/similar/" + "x" * 2000: 400,
            "/v1/duplicates/nope": 404,
            "/v1/nothing/here": 404,
        }
        for path, status in cases.items():
            answer = client.get(path)
            assert answer.status == status, path
            assert answer.headers["content-type"] == "application/json"
            error = answer.json()["error"]
            assert error["status"] == status and error["reason"], path
        assert (
            "unknown sku_id 'SKU-999999'"
            in client.get("/v1/similar/SKU-999999").json()["error"]["reason"]
        )


def test_etag_is_the_run_and_a_repeat_gets_304(published, tmp_path):
    with running(make_app(published, tmp_path, cache_max_age=120)) as client:
        first = client.get("/v1/similar/SKU-007")
        etag = first.headers["etag"]
        assert etag == f'"{RUN_A}.{tables.version(published / "tables" / "similar_items")}"'
        assert first.headers["cache-control"] == "public, max-age=120"
        again = client.get("/v1/similar/SKU-007", headers={"If-None-Match": etag})
        assert again.status == 304 and again.body == b""
        stale = client.get("/v1/similar/SKU-007", headers={"If-None-Match": '"older.1"'})
        assert stale.status == 200 and stale.json() == first.json()


def test_duplicates_gives_the_cluster_or_none(published, tmp_path):
    with running(make_app(published, tmp_path)) as client:
        member = client.get("/v1/duplicates/SKU-020").json()["cluster"]
        assert member["canonical_sku_id"] == "SKU-000"
        assert [m["sku_id"] for m in member["members"]] == ["SKU-000", "SKU-020"]
        assert member["evidence"] == ["content_hash"]
        alone = client.get("/v1/duplicates/SKU-300")
        assert alone.status == 200 and alone.json()["cluster"] is None


def test_styles_gives_the_group_representative_first_or_none(published, tmp_path):
    with running(make_app(published, tmp_path)) as client:
        answer = client.get("/v1/styles/SKU-081")  # group 1: SKUs 61, 81, 101
        assert answer.status == 200
        style = answer.json()["style"]
        assert style["representative_sku_id"] == "SKU-101"
        assert [m["sku_id"] for m in style["members"]] == ["SKU-101", "SKU-061", "SKU-081"]
        assert style["cohesion"] == pytest.approx(0.89, abs=1e-6)
        assert client.get("/v1/styles/SKU-300").json()["style"] is None
        assert client.get("/v1/styles/nope").status == 404
        assert client.get("/healthz").json()["serving"]["style_groups"] == 10


def test_a_run_without_style_groups_is_served_with_no_styles(tmp_path):
    root = tmp_path / "output"
    data = synthetic_tables(N_SKUS, 10, RUN_A, n_categories=20)
    del data["style_groups"]  # published before the styles stage existed
    publish_tables(root, RUN_A, data)
    with running(make_app(root, tmp_path)) as client:
        assert client.get("/v1/similar/SKU-081").status == 200
        assert client.get("/v1/styles/SKU-081").json() == {
            "sku_id": "SKU-081",
            "run_id": RUN_A,
            "style": None,
        }


def test_read_access_token_refuses_callers_without_it(published, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_READ_TOKEN", "s3cret-read")
    with running(make_app(published, tmp_path, read_access="token")) as client:
        refused = client.get("/v1/similar/SKU-001")
        assert refused.status == 401 and refused.headers["www-authenticate"] == "Bearer"
        wrong = client.get("/v1/similar/SKU-001", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        ok = client.get("/v1/similar/SKU-001", headers={"Authorization": "Bearer s3cret-read"})
        assert ok.status == 200 and ok.json()["sku_id"] == "SKU-001"
        assert client.get("/healthz").status == 200  # health checks need no token


def test_no_published_run_is_503_until_one_is(tmp_path):
    root = tmp_path / "empty"
    service = make_service(root, tmp_path)
    with running(make_app(root, tmp_path)) as client:
        assert client.get("/healthz").status == 503
        answer = client.get("/v1/similar/SKU-001")
        assert answer.status == 503 and "no published run" in answer.json()["error"]["reason"]
    assert service.live.current is None


def test_every_answer_during_a_swap_is_wholly_one_run(published, tmp_path):
    """A client reads in a loop while a new run is published and swapped in: each answer is
    exactly run A's or exactly run B's, its ETag names the same run, and nothing fails."""
    run_b = "2026-12-02"
    data_a = synthetic_tables(N_SKUS, 10, RUN_A, n_categories=20)
    data_b = synthetic_tables(N_SKUS, 10, run_b, n_categories=30, seed=7)
    want = {RUN_A: expected_similar(data_a), run_b: expected_similar(data_b)}
    assert want[RUN_A]["SKU-001"] != want[run_b]["SKU-001"]
    service = make_service(published, tmp_path)
    app = create_app(service, refresh_in_background=False)
    seen: dict[str, int] = {}
    problems: list[str] = []
    stop = threading.Event()

    def read_in_a_loop(client) -> None:
        i = 0
        while not stop.is_set():
            sku = f"SKU-{i % N_SKUS:03d}"
            i += 7
            answer = client.get(f"/v1/similar/{sku}")
            if answer.status != 200:
                problems.append(f"{sku}: HTTP {answer.status}")
                continue
            body = answer.json()
            run = body["run_id"]
            seen[run] = seen.get(run, 0) + 1
            if body["similar"] != want[run][sku]:
                problems.append(f"{sku}: answer of run {run} differs from that run's rows")
            if not answer.headers["etag"].startswith(f'"{run}.'):
                problems.append(f"{sku}: body of {run}, ETag {answer.headers['etag']}")

    with running(app) as client:
        readers = [threading.Thread(target=read_in_a_loop, args=(client,)) for _ in range(3)]
        for reader in readers:
            reader.start()
        try:
            publish_tables(published, run_b, data_b)
            assert service.live.refresh() is True
            before = sum(seen.values())
            while sum(seen.values()) < before + 200 and not problems:
                stop.wait(0.05)
        finally:
            stop.set()
            for reader in readers:
                reader.join()
        assert client.get("/healthz").json()["serving"]["run_id"] == run_b
    assert problems == []
    assert seen.get(RUN_A, 0) > 0 and seen.get(run_b, 0) >= 200


def test_a_run_that_fails_to_load_leaves_the_old_one_serving(published, tmp_path):
    service = make_service(published, tmp_path)
    assert service.live.refresh() is True
    run_b = "2026-12-02"
    publish_tables(published, run_b, synthetic_tables(N_SKUS, 10, run_b, n_categories=30))
    # Run B's similar_items file goes missing (a vacuum, a bad copy): B cannot be loaded.
    table = published / "tables" / "similar_items"
    for uri in tables.current_files(table):
        (published / "tables" / "similar_items" / uri.split("/similar_items/", 1)[1]).unlink()
    assert service.live.refresh() is False
    health = service.live.health()
    assert health["serving"]["run_id"] == RUN_A
    assert health["last_load_error"]["run_id"] == run_b
    assert "similar_items" in health["last_load_error"]["reason"]
    assert service.live.current.similar.lookup("SKU-001", 1)[0].category == "category-001"
    # A service started now finds B broken and serves A, the newest run that loads, saying so.
    with running(make_app(published, tmp_path / "fresh")) as client:
        health = client.get("/healthz").json()
        assert health["serving"]["run_id"] == RUN_A
        assert health["last_load_error"]["run_id"] == run_b
        assert client.get("/v1/similar/SKU-001").json()["run_id"] == RUN_A


def test_a_rollback_to_a_run_makes_the_service_serve_it_again(published, tmp_path):
    from lookalike.rollback import rollback_to_run
    from lookalike.serve.snapshot import SERVED_TABLES

    run_b = "2026-12-02"
    publish_tables(published, run_b, synthetic_tables(N_SKUS, 10, run_b, n_categories=30))
    service = make_service(published, tmp_path)
    assert service.live.refresh() and service.live.current.run_id == run_b
    rollback_to_run(published / "tables", RUN_A, SERVED_TABLES, retire_later_runs=True)
    assert service.live.refresh() is True
    assert service.live.current.run_id == RUN_A
    runs = {
        r["run_id"]: r["status"]
        for r in tables.read_table(published / "tables" / "runs").to_pylist()
    }
    assert runs == {RUN_A: "published", run_b: "rolled_back"}
