"""``lookalike serve``: the storefront's JSON API and the merchandisers' review app, one service.

    GET /v1/similar/{sku_id}?k=10   the SKU's similar items, best first
    GET /v1/duplicates/{sku_id}     the duplicate cluster the SKU is in
    GET /healthz                    the run served, its table versions, the last load error
    /review/...                     the review app (lookalike.serve.review)

Every answer comes from one ``Snapshot`` (one published run, lookalike.serve.snapshot), read
once per request from ``LiveSnapshot.current``: a swap to a newer run between two requests
changes the next answer, never half of one. API answers carry the run's ETag (its id and the
similar_items version) and ``Cache-Control: max-age=serve.cache_max_age``; a client that sends
the ETag back in ``If-None-Match`` gets 304 while the run is served. Errors are JSON:
``{"error": {"status": 404, "reason": "..."}}``.

The endpoints are plain Starlette functions without middleware: a lookup is a binary search
in memory-mapped arrays and a small JSON body, so the server's own cost dominates
(``benchmarks/serve_latency.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from lookalike.config import Config, ServeSettings, load_config
from lookalike.layout import TableLayout
from lookalike.serve import auth
from lookalike.serve.live import LiveSnapshot
from lookalike.serve.snapshot import Snapshot

log = logging.getLogger(__name__)

# A SKU id in a path: what the catalog accepts (catalog.max_sku_id_length) and nothing that
# could never be one; the lookup itself decides whether it is known.
MAX_SKU_ID_BYTES = 1024


class HTTPError(Exception):
    """An answer with a 4xx/5xx status and a reason a person can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Service:
    """What every request needs: the live snapshot, the settings, who may read and write."""

    live: LiveSnapshot
    settings: ServeSettings
    layout: TableLayout
    reviewers: auth.Reviewers
    sessions: auth.Sessions

    def snapshot(self) -> Snapshot:
        snapshot = self.live.current  # read once: the whole answer comes from this object
        if snapshot is None:
            raise HTTPError(503, "no published run yet: run the nightly job first")
        return snapshot

    def check_read_access(self, request: Request) -> None:
        if self.settings.read_access == "open":
            return
        token = auth.bearer_token(request.headers.get("authorization"))
        allowed = auth.read_token()
        if token and (
            (allowed and auth.hmac.compare_digest(token, allowed)) or self.reviewers.by_token(token)
        ):
            return
        raise HTTPError(401, "this API needs Authorization: Bearer <token> (serve.read_access)")


def json_error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "reason": reason}}, status, headers=headers)


def sku_from_path(request: Request) -> str:
    sku_id = request.path_params["sku_id"]
    if not sku_id.strip() or len(sku_id.encode("utf-8")) > MAX_SKU_ID_BYTES:
        raise HTTPError(400, f"sku_id must be 1-{MAX_SKU_ID_BYTES} bytes, not blank")
    return sku_id


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(
            400, f"{name} must be an integer in {low}..{high}, got {raw[:40]!r}"
        ) from None
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be in {low}..{high}, got {value}")
    return value


# --- the JSON API -----------------------------------------------------------------------------


def _cached(request: Request, service: Service, snapshot: Snapshot, body: dict) -> Response:
    headers = {
        "ETag": snapshot.run.etag,
        "Cache-Control": f"public, max-age={service.settings.cache_max_age}",
    }
    if request.headers.get("if-none-match") == snapshot.run.etag:
        return Response(status_code=304, headers=headers)
    return Response(
        json.dumps(body, separators=(",", ":")), headers=headers, media_type="application/json"
    )


def _api(handler):
    """Wrap an API endpoint: read access first, HTTPError as a JSON error.

    The endpoint is a coroutine: a lookup takes microseconds and never blocks, and Starlette
    would run a plain function in its thread pool, which cost ~60% of the throughput.
    """

    async def endpoint(request: Request) -> Response:
        service: Service = request.app.state.service
        try:
            service.check_read_access(request)
            return handler(request, service)
        except HTTPError as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
            return json_error(err.status, err.reason, headers)

    endpoint.__name__ = handler.__name__
    return endpoint


@_api
def similar(request: Request, service: Service) -> Response:
    sku_id = sku_from_path(request)
    k = int_param(request, "k", default=10, low=1, high=service.settings.max_k)
    snapshot = service.snapshot()
    items = snapshot.similar.lookup(sku_id, k)
    if items is None:
        raise HTTPError(404, f"unknown sku_id {sku_id!r} in run {snapshot.run_id}")
    return _cached(
        request,
        service,
        snapshot,
        {
            "sku_id": sku_id,
            "run_id": snapshot.run_id,
            "similar": [
                {
                    "sku_id": item.sku_id,
                    "rank": item.rank,
                    "score": round(item.score, 6),
                    "category": item.category,
                    "model_id": item.model_id,
                }
                for item in items
            ],
        },
    )


@_api
def duplicates(request: Request, service: Service) -> Response:
    sku_id = sku_from_path(request)
    snapshot = service.snapshot()
    cluster = snapshot.cluster_of_sku.get(sku_id)
    if cluster is None:
        if snapshot.similar.position(sku_id) is None:
            raise HTTPError(404, f"unknown sku_id {sku_id!r} in run {snapshot.run_id}")
        body = {"sku_id": sku_id, "run_id": snapshot.run_id, "cluster": None}
    else:
        body = {
            "sku_id": sku_id,
            "run_id": snapshot.run_id,
            "cluster": {
                "cluster_id": cluster.cluster_id,
                "canonical_sku_id": cluster.canonical_sku_id,
                "evidence": list(cluster.evidence_kinds()),
                "min_score": round(cluster.min_score, 6),
                "members": [
                    {"sku_id": member, "score": None if score is None else round(score, 6)}
                    for member, score in cluster.members
                ],
            },
        }
    return _cached(request, service, snapshot, body)


@_api
def styles(request: Request, service: Service) -> Response:
    """The SKU's same-style group (other colours, other sellers of this item), or null."""
    sku_id = sku_from_path(request)
    snapshot = service.snapshot()
    group = snapshot.style_of_sku.get(sku_id)
    if group is None and snapshot.similar.position(sku_id) is None:
        raise HTTPError(404, f"unknown sku_id {sku_id!r} in run {snapshot.run_id}")
    body = {"sku_id": sku_id, "run_id": snapshot.run_id, "style": None}
    if group is not None:
        body["style"] = {
            "group_id": group.group_id,
            "category": group.category,
            "representative_sku_id": group.representative_sku_id,
            "cohesion": round(group.cohesion, 6),
            "members": [
                {"sku_id": member, "similarity": round(similarity, 6)}
                for member, similarity in group.members
            ],
        }
    return _cached(request, service, snapshot, body)


async def healthz(request: Request) -> Response:
    service: Service = request.app.state.service
    body = service.live.health()
    return JSONResponse(body, 200 if service.live.current else 503)


async def favicon(request: Request) -> Response:
    return Response(status_code=204)  # browsers ask for it; there is none


def not_found(request: Request, exc: Exception) -> Response:
    return json_error(404, f"no such path {request.url.path[:200]!r}")


# --- building and running the service ---------------------------------------------------------


def create_app(service: Service, *, refresh_in_background: bool = True) -> Starlette:
    """The ASGI app. At start it loads the latest published run (a service without one answers
    503 until a run is published) and, with ``refresh_seconds`` > 0, looks for newer runs
    from a background thread."""
    from lookalike.serve import review

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        service.live.refresh()
        stop = threading.Event()
        every = service.settings.refresh_seconds
        if refresh_in_background and every > 0:
            threading.Thread(
                target=service.live.refresh_forever,
                args=(every, stop),
                name="lookalike-refresh",
                daemon=True,
            ).start()
        try:
            yield
        finally:
            stop.set()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/favicon.ico", favicon),
            Route("/v1/similar/{sku_id:path}", similar),
            Route("/v1/duplicates/{sku_id:path}", duplicates),
            Route("/v1/styles/{sku_id:path}", styles),
            Mount("/review", routes=review.routes()),
        ],
        exception_handlers={404: not_found},
        lifespan=lifespan,
        # Review forms are a few fields: a large body is a mistake or an attack.
        max_body_size=64 * 1024,
    )
    app.state.service = service
    app.state.decisions = review.Decisions(service.layout)
    return app


def service_from_config(config: Config) -> Service:
    settings = config.serve
    reviewers_file = os.environ.get(auth.REVIEWERS_FILE_ENV) or (
        config.resolve(settings.reviewers_file) if settings.reviewers_file else None
    )
    reviewers = auth.Reviewers.from_file(Path(reviewers_file) if reviewers_file else None)
    if not reviewers:
        log.warning(
            "no reviewers (set %s or serve.reviewers_file): the review app is read-only",
            auth.REVIEWERS_FILE_ENV,
        )
    if settings.read_access == "token" and not (auth.read_token() or reviewers):
        raise auth.AuthError(
            f"serve.read_access is token but neither {auth.READ_TOKEN_ENV} nor a reviewer is "
            "set: no caller could read"
        )
    layout = TableLayout(config.output_root)
    cache_dir = Path(config.resolve(settings.cache_dir)) if settings.cache_dir else None
    return Service(
        live=LiveSnapshot(layout.folder, cache_dir),
        settings=settings,
        layout=layout,
        reviewers=reviewers,
        sessions=auth.Sessions(),
    )


# uvicorn's worker processes build the app from these (``--workers`` > 1).
CONF_ENV = "LOOKALIKE_SERVE_CONF"
OUTPUT_ENV = "LOOKALIKE_SERVE_OUTPUT"


def app_from_environment() -> Starlette:
    config = load_config(os.environ[CONF_ENV])
    if os.environ.get(OUTPUT_ENV):
        config = config.with_overrides(output={"root": os.environ[OUTPUT_ENV]})
    return create_app(service_from_config(config))


def serve(conf_path: str, output: str | None, host: str, port: int, workers: int) -> None:
    """Run the service in the foreground (``lookalike serve``) until interrupted."""
    import secrets

    import uvicorn

    config = load_config(conf_path)
    if output:
        config = config.with_overrides(output={"root": output})
    service_from_config(config)  # fail here, with the reason, on a bad reviewers file
    os.environ[CONF_ENV] = str(Path(conf_path).resolve())
    os.environ[OUTPUT_ENV] = str(config.output_root)
    # Workers must accept each other's sessions: one secret for all, made here when unset.
    os.environ.setdefault(auth.SESSION_SECRET_ENV, secrets.token_urlsafe(32))
    print(
        f"lookalike serve: tables {TableLayout(config.output_root).folder}, "
        f"http://{host}:{port}/healthz, review app http://{host}:{port}/review/",
        flush=True,
    )
    uvicorn.run(
        "lookalike.serve.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http="httptools",
        loop="uvloop" if _has_uvloop() else "asyncio",
        access_log=False,
        log_level="info",
    )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
