"""The review app: merchandisers decide on the published run's duplicates and mismatches.

    GET  /review/duplicates   clusters, most confident first; filters category, evidence,
                              min_confidence (the cluster's lowest score), sku; paginated
    GET  /review/mismatches   listings that look like another category; same filters
    POST /review/duplicates/decide   not_duplicate | confirmed (a member with its cluster's
                                     canonical listing) | canonical (this member leads)
    POST /review/mismatches/decide   wrong_category | category_ok
    GET/POST /review/login, POST /review/logout, GET /review/thumb/{sku_id}

Decisions go to the Delta tables the nightly job reads (``duplicate_reviews``,
``mismatch_reviews``), one append each with the reviewer's name and the time, and to the audit
log (logger ``lookalike.serve.audit``, one JSON line per write). Delta appends do not conflict
with each other, and ``lookalike.tables.append`` retries a commit that lost a race, so two
reviewers deciding at the same moment both land.

Who may write: a reviewer signed in with name and token (a signed session cookie; each form
carries a CSRF token and a POST from another origin is refused) or a tool sending
``Authorization: Bearer <token>``. Anything else gets 401/403 and writes nothing; so do a
decision on a cluster or SKU the served run does not have (404) and malformed fields (400).
Pages are rendered by Jinja with autoescaping (titles and ids are seller text) and served with
a Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from lookalike import tables
from lookalike.layout import TableLayout
from lookalike.reviews import record_mismatch_review, record_review
from lookalike.serve import auth
from lookalike.serve.app import HTTPError, Service, int_param
from lookalike.serve.snapshot import Cluster, Mismatch, Snapshot
from lookalike.stages.report_page import html_templates, thumbnail_jpeg

log = logging.getLogger(__name__)
audit = logging.getLogger("lookalike.serve.audit")

DUPLICATE_DECISIONS = ("not_duplicate", "confirmed", "canonical")
MISMATCH_DECISIONS = ("wrong_category", "category_ok")
_MAX_FIELD = 1024
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _templates() -> jinja2.Environment:
    return html_templates("templates/review")


def _page(name: str, http_status: int = 200, **context) -> HTMLResponse:
    html = _templates().get_template(name).render(**context)
    return HTMLResponse(html, http_status, headers=_SECURITY_HEADERS)


def _error_page(request: Request, err: HTTPError) -> HTMLResponse:
    return _page(
        "error.html", err.status, status=err.status, reason=err.reason, reviewer=None, csrf=""
    )


# --- who is asking ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    reviewer: str | None
    # The session cookie when signed in through the browser (CSRF applies), else None.
    cookie: str | None


def _caller(request: Request, service: Service) -> Caller:
    token = auth.bearer_token(request.headers.get("authorization"))
    if token is not None:
        name = service.reviewers.by_token(token)
        if name is None:
            raise HTTPError(401, "the bearer token is no reviewer's")
        return Caller(name, None)
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    return Caller(service.sessions.reviewer(cookie), cookie if cookie else None)


def _check_page_access(caller: Caller, service: Service) -> None:
    if service.settings.read_access == "token" and caller.reviewer is None:
        raise HTTPError(401, "sign in first (serve.read_access is token)")


def _check_write(request: Request, caller: Caller, form: dict[str, str], service: Service) -> str:
    """The reviewer allowed to make this POST, or an HTTPError saying why not."""
    if not service.reviewers:
        raise HTTPError(403, "no reviewers are configured: the review app is read-only")
    if caller.reviewer is None:
        raise HTTPError(401, "sign in as a reviewer (or send Authorization: Bearer <token>)")
    if caller.cookie is not None:  # a browser: same origin, and the form's CSRF token
        origin = request.headers.get("origin")
        here = f"{request.url.scheme}://{request.url.netloc}"
        if (origin and origin != here) or request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPError(403, f"a form posted from another site ({origin}) is refused")
        if not service.sessions.check_csrf(caller.cookie, form.get("csrf")):
            raise HTTPError(403, "the form's CSRF token is missing or stale: reload the page")
    return caller.reviewer


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (one value each); anything else is a 4xx."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPError(415, f"send application/x-www-form-urlencoded, not {kind or 'nothing'!r}")
    body = await request.body()
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as err:
        raise HTTPError(400, f"unreadable form: {err}") from None
    fields = {}
    for name, values in parsed.items():
        if len(values) != 1 or len(values[0]) > _MAX_FIELD:
            raise HTTPError(400, f"field {name[:40]!r}: one value of at most {_MAX_FIELD} chars")
        fields[name] = values[0]
    return fields


def _required(form: dict[str, str], name: str, choices: tuple[str, ...] | None = None) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise HTTPError(400, f"field {name!r} is required")
    if choices and value not in choices:
        raise HTTPError(400, f"{name} must be one of {', '.join(choices)}, got {value[:40]!r}")
    return value


def _back(form: dict[str, str], default: str) -> str:
    """Where to go after a decision: a page of this app only (no open redirect)."""
    back = form.get("back", "")
    parts = urlsplit(back)
    if parts.scheme or parts.netloc or not parts.path.startswith("/review/") or "\\" in back:
        return default
    return back


# --- pages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    category: str
    evidence: str
    sku: str
    min_confidence: float
    page: int
    page_size: int

    @classmethod
    def of(cls, request: Request, service: Service) -> Filters:
        q = request.query_params
        raw = q.get("min_confidence", "").strip()
        try:
            min_confidence = float(raw) if raw else 0.0
        except ValueError:
            raise HTTPError(
                400, f"min_confidence must be a number in 0..1, got {raw[:40]!r}"
            ) from None
        if not 0.0 <= min_confidence <= 1.0:
            raise HTTPError(400, f"min_confidence must be in 0..1, got {min_confidence}")
        settings = service.settings
        for name in ("category", "evidence", "sku"):
            if len(q.get(name, "")) > _MAX_FIELD:
                raise HTTPError(400, f"{name}: at most {_MAX_FIELD} characters")
        return cls(
            category=q.get("category", "").strip(),
            evidence=q.get("evidence", "").strip(),
            sku=q.get("sku", "").strip(),
            min_confidence=min_confidence,
            page=int_param(request, "page", 1, 1, 1_000_000),
            page_size=int_param(
                request, "page_size", settings.page_size, 1, settings.max_page_size
            ),
        )

    def query(self, **changes) -> str:
        values = {
            "category": self.category,
            "evidence": self.evidence,
            "sku": self.sku,
            "min_confidence": self.min_confidence or "",
            "page": self.page,
            "page_size": self.page_size,
            **changes,
        }
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _paginate(rows: list, filters: Filters) -> tuple[list, int]:
    pages = max(1, math.ceil(len(rows) / filters.page_size))
    start = (filters.page - 1) * filters.page_size
    return rows[start : start + filters.page_size], pages


def _keep_cluster(cluster: Cluster, f: Filters) -> bool:
    return (
        (not f.category or f.category in cluster.categories)
        and (not f.evidence or f.evidence in cluster.evidence_kinds())
        and cluster.min_score >= f.min_confidence
        and (not f.sku or any(f.sku in sku for sku in cluster.sku_ids))
    )


def _keep_mismatch(mismatch: Mismatch, f: Filters) -> bool:
    return (
        (not f.category or f.category in (mismatch.category, mismatch.suggested_category))
        and mismatch.suggested_share >= f.min_confidence
        and (not f.sku or f.sku in mismatch.sku_id)
    )


def _page_context(request: Request, service: Service, caller: Caller, snapshot: Snapshot) -> dict:
    return {
        "run": snapshot.run,
        "reviewer": caller.reviewer,
        "can_write": bool(service.reviewers) and caller.reviewer is not None,
        "csrf": service.sessions.csrf_token(caller.cookie) if caller.cookie else "",
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "listings": snapshot.listings,
    }


def _guarded(handler):
    """A page or action: HTTPError as an HTML error page with its status."""

    async def endpoint(request: Request) -> Response:
        service: Service = request.app.state.service
        try:
            return await handler(request, service)
        except HTTPError as err:
            return _error_page(request, err)

    endpoint.__name__ = handler.__name__
    return endpoint


@_guarded
async def duplicates_page(request: Request, service: Service) -> Response:
    caller = _caller(request, service)
    _check_page_access(caller, service)
    filters = Filters.of(request, service)
    snapshot = service.snapshot()
    shown = [c for c in snapshot.clusters if _keep_cluster(c, filters)]
    rows, pages = _paginate(shown, filters)
    decided = await run_in_threadpool(request.app.state.decisions.duplicates)
    return _page(
        "duplicates.html",
        **_page_context(request, service, caller, snapshot),
        clusters=rows,
        total=len(shown),
        pages=pages,
        filters=filters,
        categories=sorted({c for cluster in snapshot.clusters for c in cluster.categories}),
        evidence_kinds=sorted({e for c in snapshot.clusters for e in c.evidence_kinds()}),
        decided=decided,
    )


@_guarded
async def mismatches_page(request: Request, service: Service) -> Response:
    caller = _caller(request, service)
    _check_page_access(caller, service)
    filters = Filters.of(request, service)
    snapshot = service.snapshot()
    shown = [m for m in snapshot.mismatches if _keep_mismatch(m, filters)]
    rows, pages = _paginate(shown, filters)
    decided = await run_in_threadpool(request.app.state.decisions.mismatches)
    return _page(
        "mismatches.html",
        **_page_context(request, service, caller, snapshot),
        mismatches=rows,
        total=len(shown),
        pages=pages,
        filters=filters,
        categories=sorted(
            {m.category for m in snapshot.mismatches}
            | {m.suggested_category for m in snapshot.mismatches}
        ),
        decided=decided,
    )


@_guarded
async def thumbnail(request: Request, service: Service) -> Response:
    caller = _caller(request, service)
    _check_page_access(caller, service)
    sku_id = request.path_params["sku_id"]
    listing = service.snapshot().listings.get(sku_id)
    if listing is None or not listing.image_uri:
        raise HTTPError(404, f"no listing {sku_id[:80]!r} in the review pages of this run")
    # The image comes from the published catalog only, never from the request.
    made = await run_in_threadpool(_thumbnail, listing.image_uri, service.settings.thumb_px)
    if made is None:
        raise HTTPError(404, f"the photo of {sku_id[:80]!r} cannot be read")
    return Response(
        made,
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@functools.lru_cache(maxsize=4096)
def _thumbnail(image_uri: str, px: int) -> bytes | None:
    made = thumbnail_jpeg(image_uri, thumb_px=px)
    return made[0] if made else None


async def stylesheet(request: Request) -> Response:
    css = _templates().loader.get_source(_templates(), "review.css")[0]
    return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})


async def index(request: Request) -> Response:
    return RedirectResponse("/review/duplicates", 303)


# --- signing in -------------------------------------------------------------------------------


def _cookie_args(request: Request, max_age: int) -> dict:
    return {
        "max_age": max_age,
        "path": "/review",
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
    }


@_guarded
async def login(request: Request, service: Service) -> Response:
    sessions = service.sessions
    if request.method == "GET":
        nonce = sessions.login_nonce()
        response = _page(
            "login.html",
            login_token=sessions.login_token(nonce),
            message=None,
            reviewer=None,
            csrf="",
            has_reviewers=bool(service.reviewers),
        )
        response.set_cookie(auth.LOGIN_COOKIE, nonce, **_cookie_args(request, 600))
        return response
    form = await _form(request)
    nonce = request.cookies.get(auth.LOGIN_COOKIE, "")
    if not nonce or form.get("login_token") != sessions.login_token(nonce):
        raise HTTPError(403, "the sign-in form is stale or from another site: reload it")
    name = service.reviewers.authenticate(form.get("name", ""), form.get("token", ""))
    if name is None:
        audit.warning(
            json.dumps(
                {
                    "event": "login_refused",
                    "name": form.get("name", "")[:64],
                    "client": _client(request),
                }
            )
        )
        fresh = sessions.login_nonce()
        response = _page(
            "login.html",
            401,
            login_token=sessions.login_token(fresh),
            message="Unknown reviewer or wrong token.",
            reviewer=None,
            csrf="",
            has_reviewers=bool(service.reviewers),
        )
        response.set_cookie(auth.LOGIN_COOKIE, fresh, **_cookie_args(request, 600))
        return response
    audit.info(json.dumps({"event": "login", "reviewer": name, "client": _client(request)}))
    response = RedirectResponse("/review/duplicates", 303)
    response.set_cookie(
        auth.SESSION_COOKIE, sessions.issue(name), **_cookie_args(request, sessions.max_age)
    )
    response.delete_cookie(auth.LOGIN_COOKIE, path="/review")
    return response


@_guarded
async def logout(request: Request, service: Service) -> Response:
    form = await _form(request)
    caller = _caller(request, service)
    if caller.cookie and service.sessions.check_csrf(caller.cookie, form.get("csrf")):
        response = RedirectResponse("/review/login", 303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/review")
        return response
    raise HTTPError(403, "sign-out needs the form's CSRF token")


# --- decisions --------------------------------------------------------------------------------


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _audit(request: Request, record: dict) -> None:
    audit.info(json.dumps({**record, "client": _client(request)}, sort_keys=True))


def _answer(request: Request, caller: Caller, record: dict, back: str) -> Response:
    if caller.cookie is None:  # a tool with a bearer token: the record itself
        return Response(json.dumps({"recorded": record}), 201, media_type="application/json")
    return RedirectResponse(back, 303)


@_guarded
async def decide_duplicate(request: Request, service: Service) -> Response:
    form = await _form(request)
    caller = _caller(request, service)
    reviewer = _check_write(request, caller, form, service)
    snapshot = service.snapshot()
    cluster_id = _required(form, "cluster_id")
    sku_id = _required(form, "sku_id")
    decision = _required(form, "decision", DUPLICATE_DECISIONS)
    cluster = snapshot.cluster_by_id.get(cluster_id)
    if cluster is None:
        raise HTTPError(404, f"no duplicate cluster {cluster_id[:80]!r} in run {snapshot.run_id}")
    if sku_id not in cluster.sku_ids:
        raise HTTPError(400, f"{sku_id[:80]!r} is not a member of cluster {cluster_id}")
    if decision == "canonical":
        pair = (sku_id, sku_id)
    elif sku_id == cluster.canonical_sku_id:
        raise HTTPError(400, f"{sku_id!r} is the cluster's canonical listing: decide on a member")
    else:
        pair = (sku_id, cluster.canonical_sku_id)
    decided_at = datetime.now(UTC)
    table = service.layout.table("duplicate_reviews")
    version = await run_in_threadpool(
        record_review, table, *pair, decision, reviewer=reviewer, decided_at=decided_at
    )
    record = {
        "event": "duplicate_decision",
        "reviewer": reviewer,
        "decision": decision,
        "cluster_id": cluster_id,
        "sku_ids": sorted(set(pair)),
        "run_id": snapshot.run_id,
        "decided_at": decided_at.isoformat(),
        "table_version": version,
    }
    _audit(request, record)
    request.app.state.decisions.forget()
    return _answer(request, caller, record, _back(form, "/review/duplicates"))


@_guarded
async def decide_mismatch(request: Request, service: Service) -> Response:
    form = await _form(request)
    caller = _caller(request, service)
    reviewer = _check_write(request, caller, form, service)
    snapshot = service.snapshot()
    sku_id = _required(form, "sku_id")
    decision = _required(form, "decision", MISMATCH_DECISIONS)
    mismatch = snapshot.mismatch_of_sku.get(sku_id)
    if mismatch is None:
        raise HTTPError(404, f"{sku_id[:80]!r} is not flagged in run {snapshot.run_id}")
    decided_at = datetime.now(UTC)
    version = await run_in_threadpool(
        record_mismatch_review,
        service.layout.table("mismatch_reviews"),
        sku_id,
        mismatch.category,
        mismatch.suggested_category,
        decision,
        reviewer=reviewer,
        decided_at=decided_at,
    )
    record = {
        "event": "mismatch_decision",
        "reviewer": reviewer,
        "decision": decision,
        "sku_id": sku_id,
        "category": mismatch.category,
        "suggested_category": mismatch.suggested_category,
        "run_id": snapshot.run_id,
        "decided_at": decided_at.isoformat(),
        "table_version": version,
    }
    _audit(request, record)
    request.app.state.decisions.forget()
    return _answer(request, caller, record, _back(form, "/review/mismatches"))


# --- decisions already made, shown beside the rows --------------------------------------------


@dataclass(frozen=True)
class Decided:
    decision: str
    reviewer: str | None
    decided_at: str


class Decisions:
    """The latest decision per pair / listing, re-read when a table's version moves."""

    def __init__(self, layout: TableLayout) -> None:
        self._layout = layout
        self._cache: dict[str, tuple[int, dict]] = {}

    def forget(self) -> None:
        self._cache.clear()

    def _latest(self, name: str, key) -> dict:
        path = self._layout.table(name)
        if not tables.is_table(path):
            return {}
        version = tables.version(path)
        cached = self._cache.get(name)
        if cached and cached[0] == version:
            return cached[1]
        rows = tables.read_table(path, version).to_pylist()
        latest: dict = {}
        for row in sorted(rows, key=lambda r: r["decided_at"]):
            latest[key(row)] = Decided(
                row["decision"], row["reviewer"], row["decided_at"].strftime("%Y-%m-%d %H:%M UTC")
            )
        self._cache[name] = (version, latest)
        return latest

    def duplicates(self) -> dict:
        """(sku, sku) pairs, sorted; a canonical choice is (sku, sku)."""
        return self._latest(
            "duplicate_reviews", lambda r: tuple(sorted((r["sku_id_a"], r["sku_id_b"])))
        )

    def mismatches(self) -> dict:
        return self._latest("mismatch_reviews", lambda r: r["sku_id"])


def routes() -> list[Route]:
    return [
        Route("/", index),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/duplicates", duplicates_page),
        Route("/mismatches", mismatches_page),
        Route("/duplicates/decide", decide_duplicate, methods=["POST"]),
        Route("/mismatches/decide", decide_mismatch, methods=["POST"]),
        Route("/thumb/{sku_id:path}", thumbnail),
        Route("/review.css", stylesheet),
    ]
