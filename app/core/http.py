"""The HTTP layer: what wraps every request (the request log and security headers, the
body's deadline and size), the route class that reads JSON strictly, and the one place
where exceptions become FastAPI's error shape. Nothing else raises HTTPException."""

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics
from app.core.errors import DomainError, Invalid
from app.core.settings import settings

log = logging.getLogger("app.access")

API = "/api"  # where every route of the contract lives
MAX_BODY_SIZE = 1024 * 1024
UPLOAD_FRAMING = 64 * 1024  # a multipart body's boundaries and part headers
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
JSON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# How uvicorn serves WebSockets, wherever it is started. Clients have nothing to send but
# pings: a message over 4 KiB closes the socket (1009) before more of it is read, and no
# compression is offered, so no small frame can inflate into a big one.
WEBSOCKET_OPTIONS: dict[str, Any] = {
    "ws_max_size": 4096,
    "ws_per_message_deflate": False,
    "ws_ping_interval": 20,  # heartbeats, so dead sockets are dropped
    "ws_ping_timeout": 20,
}


class RequestLog:
    """One structured log line per request, under an id the response carries as
    X-Request-ID; plus the headers a JSON API should send.

    Only the path is logged, never the query: a WebSocket's token travels there.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, code = time.perf_counter(), 0

        async def send_with_headers(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", request_id)
                for name, value in JSON_HEADERS.items():
                    headers.setdefault(name, value)
                if scope["path"].startswith(API + "/"):  # the docs pages need their scripts
                    headers.setdefault("Content-Security-Policy", API_CSP)
            elif message["type"] == "websocket.accept":
                code = 101
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            if settings.metrics_enabled and scope["type"] == "http":
                # The template of the route that answered; API routes know it below the prefix.
                route = getattr(scope.get("route"), "path", "unmatched")
                if scope["path"].startswith(API + "/") and not route.startswith(API + "/"):
                    route = API + route
                metrics.REQUESTS.labels(scope["method"], route, code or 500).inc()
                metrics.LATENCY.labels(scope["method"], route).observe(elapsed)
            fields = {
                "request_id": request_id,
                "method": scope.get("method", "WS"),
                "path": scope["path"],
                "status": code or 500,
                "ms": round(elapsed * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0],
            }
            log.info("request", extra={"fields": fields})


class BodyGuard:
    """What a request body may cost the server. It must have arrived within
    REQUEST_BODY_TIMEOUT_SECONDS of the request's start: else 408 and the connection is
    closed (the app sees the client as gone, and whatever it would answer is dropped). And
    it is at most 1 MiB (a multipart upload: MAX_UPLOAD_BYTES and its framing), refused
    before it is read when its Content-Length says so, else as soon as it passes.

    Nothing is held meanwhile: bodies are read before a route's dependencies take a turn
    or a connection (app.core.db.turn)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/form-data")
        limit = settings.max_upload_bytes + UPLOAD_FRAMING if multipart else MAX_BODY_SIZE
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            too_large = JSONResponse(
                {"detail": "Content Too Large"}, status_code=413, headers={"Connection": "close"}
            )
            return await too_large(scope, receive, send)
        deadline = time.monotonic() + settings.request_body_timeout_seconds
        late, size = False, 0

        async def guarded_receive() -> Message:
            nonlocal late, size
            if late:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                late = True
                return {"type": "http.disconnect"}
            size += len(message.get("body", b""))
            if size > limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "Content Too Large")
            return message

        async def send_unless_late(message: Message) -> None:
            if not late:
                await send(message)

        try:
            await self.app(scope, guarded_receive, send_unless_late)
        except Exception:
            if not late:
                raise
        if late:
            timeout = JSONResponse(
                {"detail": "Request body timed out"},
                status_code=status.HTTP_408_REQUEST_TIMEOUT,
                headers={"Connection": "close"},  # uvicorn closes the connection after it
            )
            await timeout(scope, receive, send)


class StrictJsonRequest(Request):
    """JSON as the standard library reads it, except text no column can store: a lone
    surrogate or NUL is refused (422) wherever it sits. Only a `\\u` escape can carry them."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = json.loads(body)
            if b"\\u" in body and _odd_text(value):
                raise json.JSONDecodeError("lone surrogate or NUL in text", body.decode(), 0)
            self._json = value
        return self._json


def _odd_text(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_odd_text(k) or _odd_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_odd_text(v) for v in value)
    return False


class Route(APIRoute):
    """Every route of the app: bodies read by StrictJsonRequest."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict


class Problem(BaseModel):
    """FastAPI's error shape."""

    detail: str


DESCRIPTIONS = {
    400: "Malformed request: a body that is not JSON, or a cursor that is not ours",
    401: "No token, or a bad, expired or revoked one",
    403: "The token lacks a scope this needs, or the caller may see but not change this",
    404: "Not found, or not visible to the caller",
    408: "The request body did not arrive in time",
    409: "Conflicts with existing data",
    413: "Request body too large",
    429: "A limit was reached; see Retry-After",
    503: "Capacity exhausted (database, connection pool, hashing queue); see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entry documenting these error statuses."""
    return {code: {"model": Problem, "description": DESCRIPTIONS[code]} for code in codes}


def unavailable(detail: str = "Service temporarily unavailable", retry: int = 5) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(retry)})


# SQLSTATE classes of a database that is away or busy: 08 (connection), 53 (too many
# connections, out of memory), 57P (shutting down), 57014 (a statement over its time limit),
# 40001/40P01 (serialization, deadlock).
BUSY_STATES = ("08", "53", "57P", "57014", "40001", "40P01")


def install(app: FastAPI) -> None:
    app.add_middleware(BodyGuard)
    app.add_middleware(RequestLog)

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        if isinstance(exc, Invalid):  # FastAPI's own 422 list
            detail: Any = [{"type": "value_error", "loc": exc.loc, "msg": exc.detail}]
            return JSONResponse({"detail": detail}, status_code=422)
        headers = dict(exc.headers or {})
        if exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ClientDisconnect)  # left mid-body: no server error, no one to tell
    async def client_gone(_: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)

    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        logging.getLogger("app").warning("no database connection free in time")
        return unavailable(retry=1)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 list, without echoing the input: it may be a password."""
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED)
    async def method_not_allowed(request: Request, _: Exception) -> JSONResponse:
        """405 with an Allow header that lists every route on the path, not just the first."""
        paths, path = app.openapi()["paths"], request.url.path
        operations: dict[str, Any] = paths.get(path) or next(  # as the router picks: the first fit
            (ops for t, ops in paths.items() if re.fullmatch(re.sub(r"{[^}]+}", "[^/]+", t), path)),
            {},
        )
        allowed = {method.upper() for method in operations}
        return JSONResponse(
            {"detail": "Method Not Allowed"},
            status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
            headers={"Allow": ", ".join(sorted(allowed))},
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        """The database is away or busy: 503 at once, so clients retry, instead of a 500."""
        if isinstance(exc, DataError):  # a value past what a column holds: the client's
            return JSONResponse({"detail": "A value is out of range"}, status_code=422)
        # SQLite's OperationalError also means a bad statement: only a lock is capacity.
        state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
        operational = isinstance(exc, OperationalError | InterfaceError) and (
            "sqlite" not in type(exc.orig).__module__ or "locked" in str(exc.orig)
        )
        if isinstance(exc, DBAPIError) and not (
            exc.connection_invalidated or operational or state.startswith(BUSY_STATES)
        ):
            raise exc
        logging.getLogger("app").warning("database unavailable: %s", type(exc).__name__)
        return unavailable(retry=1 if state.startswith("40") else 5)
