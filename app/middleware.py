"""What wraps every request: the request log and security headers, the body limit, the
error handlers that turn exceptions into FastAPI's error shape, and log redaction."""

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.errors import DomainError
from app.settings import settings

log = logging.getLogger("app.access")

API = "/api"  # where every route of the contract lives
MAX_BODY_SIZE = 1024 * 1024
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
JSON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"


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

        length = headers.get(b"content-length", b"0")
        try:
            # Refused before it is read; streamed bodies are counted by FastAPI.
            if length.isdigit() and int(length) > MAX_BODY_SIZE:
                too_large = JSONResponse({"detail": "Content Too Large"}, status_code=413)
                await too_large(scope, receive, send_with_headers)
            else:
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


def unavailable(detail: str = "Service temporarily unavailable", retry: int = 5) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(retry)})


class Capacity:
    """At most MAX_CONCURRENT_REQUESTS API requests at work, about the pool's size; the rest
    wait their turn in order, and beyond REQUEST_QUEUE_SIZE waiting, 503 at once. Without it,
    a burst piles every request onto the pool's queue, where some wait for many seconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(settings.max_concurrent_requests)
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API + "/"):
            return await self.app(scope, receive, send)
        if self.waiting >= settings.request_queue_size:
            return await unavailable("Server busy; try again in a moment", 1)(scope, receive, send)
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release()


def install(app: FastAPI) -> None:
    app.add_middleware(Capacity)
    app.add_middleware(RequestLog)

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

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
        """The database is away: 503 at once, so clients retry, instead of a 500."""
        # SQLSTATE classes 08 (connection), 53 (too many connections...), 57P (shutting down).
        # SQLite's OperationalError also means a bad statement: only a lock is capacity.
        state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
        operational = isinstance(exc, OperationalError | InterfaceError) and (
            "sqlite" not in type(exc.orig).__module__ or "locked" in str(exc.orig)
        )
        if isinstance(exc, DBAPIError) and not (
            exc.connection_invalidated or operational or state.startswith(("08", "53", "57P"))
        ):
            raise exc
        logging.getLogger("app").warning("database unavailable: %s", type(exc).__name__)
        return unavailable()


# A query string may carry a WebSocket's access token (`token=`, or `%74oken=`): lines of
# the server's own loggers keep the path and drop the query, whatever started the app.
QUERY = re.compile(r"\?[^\s\"']*")
TOKEN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


class RedactQueries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message or "token" in unquote(message).lower():
            # The arguments keep their shape: uvicorn's access formatter unpacks them.
            if isinstance(record.args, tuple):
                record.args = tuple(
                    QUERY.sub("?[redacted]", a) if isinstance(a, str) else a for a in record.args
                )
            if isinstance(record.msg, str) and "?" in record.msg:
                record.msg, record.args = QUERY.sub("?[redacted]", record.getMessage()), ()
        return True


def redact_server_logs() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueries) for f in logger.filters):
            logger.addFilter(RedactQueries())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; tokens in URLs are blanked out."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": TOKEN.sub(r"\1[redacted]", unquote(record.getMessage())),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)
