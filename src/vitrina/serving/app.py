"""The HTTP layer: routes, request parsing and validation, JSON errors, the web pages.

Handlers only parse and validate; the work happens in :class:`~vitrina.serving.service.Service`.
Every error is JSON ``{"error": code, "detail": message}`` with its status (401, 408, 413, 415,
422, 429, 503, and 500 for a fault of the server), and every response carries the model version
in ``X-Model-Version``.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import swagger_ui_bundle
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from vitrina.serving.errors import InvalidQuery, PayloadTooLarge, ServingError, UnsupportedMediaType
from vitrina.serving.inference_protocol import inference_protocol_router
from vitrina.serving.model import LoadedModel
from vitrina.serving.responses import (
    ERRORS,
    MAX_ID,
    BatchResponse,
    CheckResponse,
    ChecksResponse,
    ErrorResponse,
    ModelResponse,
    PredictResponse,
    Verdict,
)
from vitrina.serving.review_routes import add_review_routes, requester
from vitrina.serving.security import AccessGate, ApiKeys, RateLimiter, load_api_keys
from vitrina.serving.service import Service
from vitrina.serving.settings import MEBIBYTE, ServeSettings
from vitrina.serving.uploads import Upload
from vitrina.version import __version__

SETTINGS_ENV = "VITRINA_SERVE_SETTINGS"
STATIC = Path(__file__).resolve().parent / "static"
TopK = Annotated[int, Query(ge=1, le=1000, description="how many labels to return")]
Photos = Annotated[list[UploadFile], File(description="one or more photos (repeat the field)")]


# ----------------------------------------------------------------------------- middleware
def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


class RequestEnvelope:
    """ASGI middleware around every request: body size limit and timeout, metrics, the model version header."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app = app
        self.service = service
        self.max_body = service.settings.max_request_bytes
        self.body_timeout = service.settings.body_timeout

    def _too_large(self) -> JSONResponse:
        limit = self.max_body / MEBIBYTE
        detail = f"the request is larger than this server's {limit:.3g} MB limit"
        return JSONResponse(error_body("payload_too_large", detail), 413, {"Connection": "close"})

    def _too_slow(self) -> JSONResponse:
        detail = f"the request body did not arrive within {self.body_timeout:g} s"
        return JSONResponse(error_body("request_timeout", detail), 408, {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        has_body = "transfer-encoding" in headers or (length is not None and length.strip() != "0")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            status = 413
            await self._too_large()(scope, receive, send)
            self._observe(scope, status, started)
            return
        received = 0
        cut_off: JSONResponse | None = None  # replaces the app's answer to a body cut off (too large, too slow)
        responded = body_complete = False
        body_deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def limited_receive() -> Message:
            nonlocal received, cut_off, body_complete
            if body_complete or responded:
                return await receive()  # e.g. listening for the client to disconnect: no deadline
            try:
                message = await asyncio.wait_for(receive(), body_deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                cut_off = self._too_slow()
                return {"type": "http.disconnect"}  # stops the form parser; the 408 replaces its answer
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_body:
                cut_off = self._too_large()
                return {"type": "http.disconnect"}  # stops the form parser; the 413 replaces its answer
            return message

        async def send_with_version(message: Message) -> None:
            nonlocal status, responded
            if cut_off is not None:
                return  # the app's answer to a cut-off body is replaced below
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                extra = []
                version = scope.get("state", {}).get("model_version")
                if version is None and self.service.holder.current is not None:
                    version = self.service.holder.current.version
                if version is not None:
                    extra.append((b"x-model-version", version.encode()))
                if has_body and not body_complete:  # answered before the body was read (401, 429, 405...): never read it
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_version)
        except Exception:
            if cut_off is None:
                self._observe(scope, status, started)
                raise
        if cut_off is not None:
            status = cut_off.status_code
            await cut_off(scope, receive, send)
        self._observe(scope, status, started)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        metrics = self.service.metrics
        metrics.requests.labels(scope["method"], route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


# ----------------------------------------------------------------------------- request parsing
def require_multipart(request: Request) -> None:
    """415 for bodies that are not multipart forms (JSON, raw bytes, URL-encoded)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        shown = content_type.split(";", 1)[0] or "no content type"
        raise UnsupportedMediaType(f"{shown}: send the photos as multipart/form-data in the field 'image'")


async def read_uploads(files: list[UploadFile], settings: ServeSettings) -> list[Upload]:
    """The uploaded files' bytes; 413 for one larger than the limit (checked before reading it)."""
    uploads = []
    for number, file in enumerate(files, start=1):
        name = file.filename or f"photo {number}"
        if file.size is not None and file.size > settings.max_upload_bytes:
            raise PayloadTooLarge(f"{name}: {file.size / MEBIBYTE:.3g} MB; photos may be at most {settings.max_upload_mb:g} MB")
        uploads.append(Upload(name, file.content_type, await file.read()))
    return uploads


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One readable sentence for FastAPI's validation errors."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
        if error.get("type") == "missing":
            parts.append(f"missing field '{where}'")
        else:
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# ----------------------------------------------------------------------------- the app
def create_app(settings: ServeSettings, model: LoadedModel | None = None) -> FastAPI:
    """The server for ``settings``; ``model`` is a model already loaded (else loaded at start-up)."""
    service = Service(settings, model)
    keys = ApiKeys(load_api_keys(settings.api_keys_file))
    app = new_app(service)
    add_error_handlers(app)
    app.include_router(api_router(service, keys))
    app.include_router(inference_protocol_router(service))
    add_health_routes(app, service)
    add_pages(app)
    app.add_middleware(AccessGate, keys=keys, limiter=RateLimiter(settings.rate_limit, settings.rate_burst),
                       metrics_public=settings.metrics_public)
    app.add_middleware(RequestEnvelope, service=service)
    if settings.proxies:  # the client address of a request from a trusted proxy is the one it forwards
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.proxies)
    return app


def new_app(service: Service) -> FastAPI:
    """An app without routes whose life span starts and stops ``service``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="vitrina",
        version=__version__,
        summary="Checks sellers' product photos against the category they chose.",
        description="Upload photos as multipart/form-data in the field `image`. Every answer names the model "
        "version that produced it (`model_version`, and the `X-Model-Version` header).",
        lifespan=lifespan,
        docs_url=None,  # served by add_pages from the packaged Swagger UI, so /docs works without internet
        redoc_url=None,
    )
    app.state.service = service
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal as JSON ``{"error": code, "detail": message}``: the service's, validation's, routing's."""

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", validation_message(list(exc.errors()))), 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def server_fault(_: Request, exc: Exception) -> JSONResponse:  # the last resort: still JSON, no traceback
        return JSONResponse(error_body("internal_error", "the server failed to answer this request; it has been logged"), 500)


def api_router(service: Service, keys: ApiKeys) -> APIRouter:
    """The ``/v1`` routes: predictions and listing checks, the model, the moderation log."""
    # Documents the key in /docs; AccessGate enforces it before any body is read.
    documented_key = [Security(APIKeyHeader(name="X-API-Key", auto_error=False))] if keys.enabled else []
    v1 = APIRouter(prefix="/v1", dependencies=documented_key, responses=ERRORS)
    add_prediction_routes(v1, service)
    add_model_route(v1, service)
    add_moderation_routes(v1, service)
    add_review_routes(v1, service)
    return v1


def add_prediction_routes(v1: APIRouter, service: Service) -> None:
    """``POST /v1/predict``, ``/v1/predict/batch`` and ``/v1/check``: the photos go through the model."""
    settings = service.settings
    uploads = [Depends(require_multipart)]

    @v1.post("/predict", response_model=PredictResponse, dependencies=uploads, summary="Top-k labels of one photo")
    async def predict(request: Request, image: Annotated[UploadFile, File(description="the photo")], top_k: TopK = settings.top_k) -> dict[str, Any]:
        answer = await service.predict(await read_uploads([image], settings), top_k)
        request.state.model_version = answer["model_version"]
        return {"model_version": answer["model_version"], **answer["results"][0]}

    @v1.post("/predict/batch", response_model=BatchResponse, dependencies=uploads, summary="Top-k labels of several photos")
    async def predict_batch(request: Request, image: Photos, top_k: TopK = settings.top_k) -> dict[str, Any]:
        answer = await service.predict(await read_uploads(image, settings), top_k)
        request.state.model_version = answer["model_version"]
        return answer

    @v1.post("/check", response_model=CheckResponse, dependencies=uploads, summary="Check a listing's photos against its category")
    async def check(request: Request, image: Photos, category: Annotated[str, Form(description="the category the seller chose")]) -> dict[str, Any]:
        answer = await service.check(await read_uploads(image, settings), category.strip(), requester(request))
        request.state.model_version = answer["model_version"]
        return answer


def add_model_route(v1: APIRouter, service: Service) -> None:
    """``GET /v1/model``: the model being served, its thresholds and the server's limits."""

    @v1.get("/model", response_model=ModelResponse, summary="The model being served")
    async def model_info() -> dict[str, Any]:
        return service.model_info()


def add_moderation_routes(v1: APIRouter, service: Service) -> None:
    """``GET /v1/checks`` and the photos kept with them: the moderation log."""

    @v1.get("/checks", response_model=ChecksResponse, summary="The moderation log, newest first")
    async def checks(
        verdict: Annotated[Verdict | None, Query(description="only checks with this verdict")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only checks older than this id (paging)")] = None,
        after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="only checks newer than this id, oldest first "
                                           "(following the log: every check once, in order)")] = None,
    ) -> dict[str, Any]:
        if before is not None and after is not None:
            raise InvalidQuery("pass ?before= (paging back) or ?after= (following the log), not both")
        return await service.recent_checks(verdict, limit, before, after)

    @v1.get("/checks/{check_id}/photos/{position}", summary="A photo kept in the moderation log",
            responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}})
    async def logged_photo(
        check_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], position: Annotated[int, PathParam(ge=0, le=MAX_ID)]
    ) -> Response:
        stored = await service.stored_photo(check_id, position)
        if stored is None:
            raise HTTPException(404, "no stored photo here (kept as --store-images says: mismatch and uncertain checks by default, within the size cap and retention)")
        data, media_type = stored
        return Response(data, media_type=media_type or "application/octet-stream", headers={"X-Content-Type-Options": "nosniff"})


def add_health_routes(app: FastAPI, service: Service) -> None:
    """``/healthz``, ``/readyz`` and ``/metrics``: for the orchestrator and the monitoring."""

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and requests are accepted")
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse({"status": "not ready"}, 503, {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "model_version": service.model.version})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


def add_pages(app: FastAPI) -> None:
    """The web pages (listing check, moderation), the API docs and their static files."""

    @app.get("/", include_in_schema=False)
    async def check_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/moderation", include_in_schema=False)
    async def moderation_page() -> FileResponse:
        return FileResponse(STATIC / "moderation.html")

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="vitrina API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg" if (STATIC / "favicon.svg").is_file() else "",
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")


def create_app_from_environment() -> FastAPI:
    """The app factory of server worker processes: settings arrive as JSON in ``VITRINA_SERVE_SETTINGS``."""
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))
