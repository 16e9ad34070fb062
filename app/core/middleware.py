"""What wraps every request before a route sees it: the request log and the headers a JSON
API sends (RequestLog), the body's deadline and size (BodyGuard). app.core.http installs
them."""

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Collection

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics
from app.core.logs import redact
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
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
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
                route = getattr(scope.get("route"), "path", None)
                if route is None:
                    route = "unmatched"
                elif scope["path"].startswith(API + "/") and not route.startswith(API + "/"):
                    route = API + route
                # Labels from a fixed set only: a client's invented methods make no series.
                method = scope["method"] if scope["method"] in METHODS else "other"
                metrics.REQUESTS.labels(method, route, code or 500).inc()
                metrics.LATENCY.labels(method, route, code or 500).observe(elapsed)
            fields = {
                "request_id": request_id,
                "method": scope.get("method", "WS"),
                "path": redact(scope["path"]),
                "status": code or 500,
                "ms": round(elapsed * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0],
            }
            log.info("request", extra={"fields": fields})


class BodyGuard:
    """What a request body may cost the server. It must have arrived within
    REQUEST_BODY_TIMEOUT_SECONDS of the request's start: else 408. And it is at most 1 MiB
    (a multipart upload to one of `upload_paths`: MAX_UPLOAD_BYTES and its framing): else
    413, before it is read when its Content-Length says so, else as soon as it passes.
    Either way the app sees the client as gone, whatever it would answer is dropped, and
    the connection is closed. Once the body is in, its deadline is over: a download takes
    as long as its reader.

    Nothing is held meanwhile: bodies are read before a route's dependencies take a turn
    or a connection (app.core.db.turn)."""

    def __init__(self, app: ASGIApp, upload_paths: Collection[str] = ()) -> None:
        self.app = app
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        # The path decides, not the client's Content-Type alone: that would lift every route's.
        # A media type is case-insensitive (RFC 9110), as the upload's own parser reads it.
        multipart = headers.get("content-type", "").lower().startswith("multipart/form-data")
        upload = multipart and scope["path"] in self.upload_paths
        limit = settings.max_upload_bytes + UPLOAD_FRAMING if upload else MAX_BODY_SIZE
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await refusal(TOO_LARGE)(scope, receive, send)
        has_body = (length.isdigit() and int(length) > 0) or "transfer-encoding" in headers
        deadline = time.monotonic() + settings.request_body_timeout_seconds
        refused: tuple[int, str] | None = None
        size, whole, started = 0, False, False

        # An exception raised here would reach the route as a body it could not parse (400):
        # the app is told the client left instead, and the refusal is sent from here.
        async def guarded_receive() -> Message:
            nonlocal refused, size, whole
            if whole:  # what follows is the client leaving, whenever it does (a long download)
                return await receive()
            if refused:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                refused = TIMED_OUT
                return {"type": "http.disconnect"}
            size += len(message.get("body", b""))
            if size > limit:
                refused = TOO_LARGE
                return {"type": "http.disconnect"}
            whole = not message.get("more_body", False)
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if not refused:
                if message["type"] == "http.response.start" and has_body and not whole:
                    # Answered before its body was read (a 401, a 404): uvicorn would read
                    # and drop the rest for as long as the client sends it, past any deadline.
                    MutableHeaders(scope=message).append("Connection", "close")
                started = True
                await send(message)

        try:
            await self.app(scope, guarded_receive, send_unless_refused)
        except Exception:
            if not refused:
                raise
        if refused and not started:  # a response begun before the body was in stays cut short
            await refusal(refused)(scope, receive, send)


TIMED_OUT = (status.HTTP_408_REQUEST_TIMEOUT, "Request body timed out")
TOO_LARGE = (status.HTTP_413_CONTENT_TOO_LARGE, "Content Too Large")


def refusal(reason: tuple[int, str]) -> JSONResponse:
    code, detail = reason
    # uvicorn closes the connection after it: the rest of the body is never read.
    return JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})
