"""HTTP search service and web page around an already loaded searcher.

`create_app(searcher, cfg)` builds a FastAPI app around objects the caller loaded once; nothing here runs on
import and nothing is global, so tests can build as many apps as they like. Searching and catalogue reads go
straight to the searcher; admin changes go through the durable changelog first (see `changelog.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from enclip.errors import EnclipError
from enclip.search.protocol import SearchService
from enclip.serve import schemas
from enclip.serve.changelog import Changelog, delete_record, replay, upsert_record
from enclip.serve.schemas import AdminOut, ApiError, ItemOut, SearchOut

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
FORM_OVERHEAD_BYTES = 256 * 1024  # room for the text fields and multipart boundaries around an upload
LATENCY_WINDOW = 2048  # latency samples kept per endpoint for the percentiles


@dataclass
class ServeCfg:
    """Settings of the search service."""

    host: str = "127.0.0.1"  # bind address; loopback unless the service is meant to be reachable from outside
    port: int = 8000  # TCP port
    max_upload_bytes: int = 5_000_000  # largest accepted image upload (413 above)
    max_k: int = 100  # largest number of hits one search may ask for
    max_text_chars: int = 500  # longest accepted text query
    max_image_pixels: int = 25_000_000  # largest decoded image (width*height); guards against decompression bombs
    admin_token: str | None = None  # bearer token for /admin; None turns the admin routes off
    changelog_path: Path | None = None  # durable log of admin changes, replayed at start-up; None = not durable
    log_level: str = "info"  # uvicorn log level


def resolve_admin_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The admin token from ``ENCLIP_ADMIN_TOKEN``, or from the file named by ``ENCLIP_ADMIN_TOKEN_FILE``.

    A file keeps the secret out of the process list and shell history; None means admin stays off.
    """
    env = os.environ if environ is None else environ
    if env.get("ENCLIP_ADMIN_TOKEN", "").strip():
        return env["ENCLIP_ADMIN_TOKEN"].strip()
    token_file = env.get("ENCLIP_ADMIN_TOKEN_FILE", "").strip()
    if not token_file:
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise EnclipError(f"cannot read the admin token file {token_file} ({error}); fix "
                          "ENCLIP_ADMIN_TOKEN_FILE or unset it to run without admin routes") from None
    if not token:
        raise EnclipError(f"the admin token file {token_file} is empty; write a long random token into it")
    return token


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always one of the observed values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class RequestMetrics:
    """Per-endpoint request counts and recent latencies, in memory, for ``GET /stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}
        self._latencies: dict[str, deque[float]] = {}

    def record(self, endpoint: str, millis: float, status: int) -> None:
        with self._lock:
            counts = self._counts.setdefault(endpoint, {"count": 0, "errors_4xx": 0, "errors_5xx": 0})
            counts["count"] += 1
            if status >= 400:
                counts["errors_5xx" if status >= 500 else "errors_4xx"] += 1
            self._latencies.setdefault(endpoint, deque(maxlen=LATENCY_WINDOW)).append(millis)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {endpoint: {**counts, "p50_ms": round(percentile(list(self._latencies[endpoint]), 50), 3),
                               "p99_ms": round(percentile(list(self._latencies[endpoint]), 99), 3)}
                    for endpoint, counts in sorted(self._counts.items())}


class MetricsMiddleware:
    """Times every HTTP request and files it under its route template (``GET /items/{item_id}``)."""

    def __init__(self, app, metrics: RequestMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "(unmatched)"
            self.metrics.record(f"{scope['method']} {route}", (time.perf_counter() - started) * 1000, status)


class BodyLimitMiddleware:
    """Refuses request bodies over a byte limit: early from Content-Length, or while streaming when absent."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, _too_large_message(self.limit))
            return message

        await self.app(scope, counting_receive, send)


def _too_large_message(limit: int) -> str:
    return f"request body is larger than {limit} bytes; send a smaller image"


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": _too_large_message(limit)}, status_code=413)


@dataclass
class ServiceState:
    """What the routes share: settings, the searcher once ready, the changelog and the metrics."""

    cfg: ServeCfg
    searcher: SearchService | None = None  # the searcher, once attached
    changelog: Changelog | None = None
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def require_searcher(self):
        if self.searcher is None:
            raise ApiError(503, "the index is still loading; retry in a few seconds")
        return self.searcher

    def apply(self, record: dict, change: Callable[[], None], check: Callable[[], None] = lambda: None) -> int | None:
        """Log a change durably, then apply it; serialised so log order is index order."""
        with self.write_lock:
            check()
            seq = self.changelog.append(record) if self.changelog is not None else None
            change()
            return seq


def create_app(searcher: SearchService | None, cfg: ServeCfg) -> FastAPI:
    """Build the service around a loaded searcher (or None: then /health answers 503 until `attach_searcher`)."""
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from this service, not a CDN, so they work offline.
    app = FastAPIOffline(title="enclip search", version="1", description="Multimodal fashion search over an "
                         "ENCLIP ensemble index. Errors are JSON objects {\"error\": message}.")
    state = ServiceState(cfg=cfg)
    app.state.enclip = state
    if cfg.changelog_path is not None:
        state.changelog = Changelog(Path(cfg.changelog_path))
    elif cfg.admin_token is not None:
        log.warning("admin routes are on without a changelog: changes will be lost at restart")
    _add_error_handlers(app)
    _add_search_routes(app, state)
    _add_item_routes(app, state)
    _add_admin_routes(app, state)
    _add_page_routes(app)
    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    if searcher is not None:
        attach_searcher(app, searcher)
    return app


def attach_searcher(app: FastAPI, searcher: SearchService) -> None:
    """Replay the changelog onto the searcher, then start answering with it."""
    state: ServiceState = app.state.enclip
    replay(searcher, state.cfg.changelog_path)
    state.searcher = searcher


def serve(searcher: SearchService, cfg: ServeCfg) -> None:
    """Run the service with uvicorn until interrupted (what ``enclip serve`` calls)."""
    import uvicorn

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the service is reachable from other machines", cfg.host)
    uvicorn.run(create_app(searcher, cfg), host=cfg.host, port=cfg.port, log_level=cfg.log_level)


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(EnclipError)
    async def enclip_error(request: Request, exc: EnclipError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # the exception goes on to uvicorn, which logs its traceback and drops the connection after this response;
        # saying so lets a client open a new connection for its next request instead of failing on the dropped one
        return error(500, "internal error; the server log has the details", {"Connection": "close"})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error(422, f"invalid request: {details}")


def _add_search_routes(app: FastAPI, state: ServiceState) -> None:
    cfg = state.cfg

    @app.post("/search", response_model=SearchOut, responses=schemas.ERRORS, openapi_extra=schemas.SEARCH_BODY)
    async def search(request: Request) -> SearchOut:
        """Search by text, an uploaded photo, a catalogue item's photo (`image_id`), or a mix."""
        searcher = state.require_searcher()
        query = await _read_query(request, cfg)
        schemas.check_query(query, list(searcher.filter_keys), list(searcher.fusion_rules), cfg.max_k,
                            cfg.max_text_chars)
        if query.image is not None and query.image_id is not None:
            raise ApiError(422, "give either an uploaded 'image' or an 'image_id', not both")
        image = query.image
        if query.image_id is not None:
            image = await run_in_threadpool(_catalogue_image, searcher, query.image_id)
        result = await run_in_threadpool(lambda: searcher.search(
            text=query.text, image=image, k=query.k, filters=query.filters or None, weight=query.weight,
            fusion=query.fusion, channels=query.channels, fusion_weights=query.fusion_weights,
            channel_fusion=query.channel_fusion))
        # Serialised once here: returning the model would make FastAPI validate and encode it a second time.
        return Response(_search_out(result).model_dump_json(), media_type="application/json")

    @app.get("/filters", responses=schemas.ERRORS)
    def filters() -> dict[str, list[str]]:
        """Distinct values of each filterable attribute, to build the page's filter menus."""
        searcher = state.require_searcher()
        values = searcher.attribute_values()
        return {key: list(values.get(key, [])) for key in searcher.filter_keys}


async def _read_query(request: Request, cfg: ServeCfg) -> schemas.SearchQuery:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return schemas.query_from_json(await request.body())
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        async with request.form(max_files=1, max_fields=64) as form:
            data = await _read_upload(form, "image", cfg)
            image = None if data is None else await run_in_threadpool(
                schemas.decode_image, data, cfg.max_image_pixels, _upload_name(form, "image"))
            return schemas.query_from_form(form, image)
    raise ApiError(415, "send the search as application/json or multipart/form-data")


async def _read_upload(form, name: str, cfg: ServeCfg) -> bytes | None:
    upload = form.get(name)
    if upload is None or (isinstance(upload, str) and not upload):
        return None
    if not isinstance(upload, UploadFile):
        raise ApiError(422, f"field {name!r} must be a file upload")
    if not upload.filename and not upload.size:
        return None  # what a browser form sends when no file was chosen
    data = await upload.read(cfg.max_upload_bytes + 1)
    if len(data) > cfg.max_upload_bytes:
        raise ApiError(413, f"upload {name!r} is larger than {cfg.max_upload_bytes} bytes; send a smaller image")
    return data


def _upload_name(form, name: str) -> str:
    upload = form.get(name)
    return getattr(upload, "filename", None) or name


def _catalogue_image(searcher, item_id: str) -> bytes:
    try:
        return searcher.image_bytes(item_id)
    except EnclipError:
        raise ApiError(404, f"no catalogue item with id {item_id!r}") from None


def _search_out(result) -> SearchOut:
    hits = [schemas.HitOut(id=hit.id, score=hit.score, title=hit.title, attributes=hit.attributes,
                           member_scores=list(hit.member_scores), spread=hit.spread, votes=hit.votes,
                           channels=dict(hit.channels), explanation=hit.explanation,
                           image_url=schemas.image_url(hit.id)) for hit in result.hits]
    return SearchOut(hits=hits, low_confidence=result.low_confidence, fusion=result.fusion, took_ms=result.took_ms)


def _add_item_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/items/{item_id}", response_model=ItemOut, responses=schemas.ERRORS)
    def item(item_id: str) -> ItemOut:
        """One catalogue item's title and attributes."""
        found = _item_or_404(state.require_searcher(), item_id)
        return ItemOut(id=found["id"], title=found["title"], attributes=found["attributes"],
                       image_url=schemas.image_url(found["id"]))

    @app.get("/items/{item_id}/image", responses={**schemas.ERRORS, 200: {"content": {"image/*": {}}}, 304: {}})
    def item_image(item_id: str, request: Request) -> Response:
        """The catalogue image, cacheable; answers 304 when the client's copy is current."""
        data = _catalogue_image(state.require_searcher(), item_id)
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=schemas.sniff_image_type(data), headers=headers)

    @app.get("/health", responses={503: {"model": schemas.ErrorOut}})
    def health() -> JSONResponse:
        """200 once the index is loaded, 503 before (for load balancers and start-up scripts)."""
        if state.searcher is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "items": len(state.searcher)})

    @app.get("/stats", responses=schemas.ERRORS)
    def stats() -> dict[str, Any]:
        """Index statistics plus per-endpoint request counts and latency percentiles (ms)."""
        return {**state.require_searcher().stats(), "requests": state.metrics.snapshot()}


def _item_or_404(searcher, item_id: str) -> dict:
    try:
        return searcher.item(item_id)
    except EnclipError:
        raise ApiError(404, f"no catalogue item with id {item_id!r}") from None


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in candidates or etag in candidates


def _add_admin_routes(app: FastAPI, state: ServiceState) -> None:
    cfg = state.cfg

    @app.post("/admin/items", status_code=201, response_model=AdminOut, responses=schemas.ERRORS,
              openapi_extra=schemas.ADMIN_BODY)
    async def add_item(request: Request) -> AdminOut:
        """Add or replace one catalogue item (bearer token required); durable once answered."""
        _require_admin(request, cfg)
        searcher = state.require_searcher()
        async with request.form(max_files=1, max_fields=8) as form:
            item = schemas.parse_item(schemas.text_field(form, "item"))
            data = await _read_upload(form, "image", cfg)
            name = _upload_name(form, "image")
        if data is None:
            raise ApiError(422, "field 'image' is required: the item's photo as a file upload")
        await run_in_threadpool(schemas.decode_image, data, cfg.max_image_pixels, name)
        seq = await run_in_threadpool(state.apply, upsert_record(item, data),
                                      lambda: searcher.add_items([item], [data]))
        return AdminOut(id=item["id"], op="upsert", seq=seq)

    @app.delete("/admin/items/{item_id}", response_model=AdminOut, responses=schemas.ERRORS)
    def delete_item(item_id: str, request: Request) -> AdminOut:
        """Remove one catalogue item (bearer token required); durable once answered."""
        _require_admin(request, cfg)
        searcher = state.require_searcher()
        seq = state.apply(delete_record(item_id), lambda: searcher.remove_items([item_id]),
                          check=lambda: _item_or_404(searcher, item_id))
        return AdminOut(id=item_id, op="delete", seq=seq)


def _require_admin(request: Request, cfg: ServeCfg) -> None:
    if cfg.admin_token is None:
        raise ApiError(403, "admin routes are off: set ENCLIP_ADMIN_TOKEN (or ENCLIP_ADMIN_TOKEN_FILE naming a "
                            "file that holds the token) and restart the service to enable them")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.admin_token.encode()):
        raise ApiError(401, "missing or wrong admin token: send the header 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})


def _add_page_routes(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
