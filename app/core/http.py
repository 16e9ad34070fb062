"""The HTTP layer: the middlewares installed (app.core.middleware), the route class that
reads JSON strictly, and the one place where exceptions become FastAPI's error shape."""

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Coroutine
from contextlib import suppress
from typing import Any

from botocore.exceptions import ConnectionError as StorageUnreachable
from botocore.exceptions import HTTPClientError
from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.websockets import WebSocket, WebSocketState
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.core.errors import DomainError, Invalid
from app.core.middleware import BodyGuard, RequestLog
from app.core.settings import settings


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's own, except for a handshake its parser refuses: a request line or header
    over 8 KiB (a browser's large cookies) or more than 128 headers. uvicorn leaves that
    refusal unsent and the connection open, so the client would wait for ever."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            self.transport.write(b"".join(self.conn.data_to_send()))  # its 414 or 431
            self.transport.close()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's own, with a time limit on a request's headers (REQUEST_HEADERS_TIMEOUT_SECONDS):
    uvicorn times only a kept-alive connection on which nothing arrives, so a client that
    sends its headers a byte at a time (slowloris) would hold a connection for ever."""

    headers_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.time_headers()

    def on_headers_complete(self) -> None:
        self.time_headers(stop=True)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # else a pipelined request started
            self.time_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.time_headers(stop=True)
        super().connection_lost(exc)

    def time_headers(self, stop: bool = False) -> None:
        if self.headers_timer is not None:
            self.headers_timer.cancel()
        self.headers_timer = None
        if not stop:
            limit = settings.request_headers_timeout_seconds
            self.headers_timer = self.loop.call_later(limit, self.timeout_keep_alive_handler)


# How uvicorn serves HTTP and WebSockets when the app starts it (`python -m app`). Clients
# have nothing to send on a socket but pings: a message over 4 KiB closes it (1009) before
# more of it is read, and no compression is offered, so no small frame inflates.
SERVER_OPTIONS: dict[str, Any] = {
    "http": HttpProtocol,
    "ws": WebSocketProtocol,
    "ws_max_size": 4096,
    "ws_per_message_deflate": False,
    "ws_ping_interval": 20,  # heartbeats, so dead sockets are dropped
    "ws_ping_timeout": 20,
}


class StrictJsonRequest(Request):
    """JSON as the standard library reads it, in UTF-8 only (RFC 8259: JSON between systems
    is UTF-8), except text no column can store: a lone surrogate or NUL is refused (422)
    wherever it sits. In UTF-8 only a `\\u` escape can carry them: the decoder refuses an
    encoded surrogate, the parser a raw control character. Each refusal is a JSON error."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8-sig")  # a BOM is tolerated, as json.loads does
            except UnicodeDecodeError as e:
                doc = body.decode(errors="replace")
                raise json.JSONDecodeError("not UTF-8", doc, e.start) from e
            value = json.loads(text)
            if "\\u" in text and _odd_text(value):
                raise json.JSONDecodeError("lone surrogate or NUL in text", text, 0)
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


def invalid(msg: str, loc: list[str]) -> JSONResponse:
    """A 422 in FastAPI's own list shape, for one value."""
    detail = [{"type": "value_error", "loc": loc, "msg": msg}]
    return JSONResponse({"detail": detail}, status_code=422)


async def answer(conn: Request | WebSocket, response: JSONResponse) -> JSONResponse | None:
    """`response`, or for a socket, which an HTTP answer cannot reach once accepted, a close
    that means the same: 1012 for a 503 (come back later and catch up), 1008 for the rest.
    Sent as a response, it would fail: no close frame, and a server error logged."""
    if not isinstance(conn, WebSocket):
        return response
    if conn.application_state != WebSocketState.DISCONNECTED:
        with suppress(OSError):  # the client left meanwhile
            await conn.close(1012 if response.status_code == 503 else 1008)
    return None


# SQLSTATE classes of a database that is away or busy: 08 (connection), 53 (too many
# connections, out of memory), 57P (shutting down), 57014 (a statement over its time limit),
# 55P03 (a lock waited for past lock_timeout), 40001/40P01 (serialization, deadlock).
BUSY_STATES = ("08", "53", "57P", "57014", "55P03", "40001", "40P01")


def install(app: FastAPI, upload_paths: Collection[str] = ()) -> None:
    app.add_middleware(BodyGuard, upload_paths=upload_paths)
    if settings.cors_origins:  # around BodyGuard: a browser must be able to read its 413 and 408
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestLog)

    @app.exception_handler(DomainError)
    async def domain_error(conn: Request | WebSocket, exc: DomainError) -> JSONResponse | None:
        if isinstance(exc, Invalid):
            return await answer(conn, invalid(exc.detail, exc.loc))
        headers = dict(exc.headers or {})
        if exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after)
        body = {"detail": exc.detail}
        return await answer(conn, JSONResponse(body, status_code=exc.status_code, headers=headers))

    @app.exception_handler(ClientDisconnect)  # left mid-body: no server error, no one to tell
    async def client_gone(_: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)

    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(conn: Request | WebSocket, exc: PoolTimeout) -> JSONResponse | None:
        logging.getLogger("app").warning("no database connection free in time")
        return await answer(conn, unavailable(retry=1))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 list, without echoing the input: it may be a password."""
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED)
    async def method_not_allowed(request: Request, _: Exception) -> JSONResponse:
        """405 with an Allow header that lists every route on the path, not just the first.
        The path is the router's first fit, found as the router finds it: by the routes'
        own convertors, the docs' routes too (the schema lists neither)."""
        routes = app.router.routes
        fit = next((r for r in routes if r.matches(request.scope)[0] is Match.PARTIAL), None)
        path = getattr(fit, "path", None)
        allowed = {
            m
            for r in routes
            if path and getattr(r, "path", None) == path
            for m in getattr(r, "methods", None) or ()
        }
        return JSONResponse(
            {"detail": "Method Not Allowed"},
            status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
            headers={"Allow": ", ".join(sorted(allowed))},
        )

    @app.exception_handler(StorageUnreachable)
    @app.exception_handler(HTTPClientError)
    async def storage_unavailable(conn: Request | WebSocket, exc: Exception) -> JSONResponse | None:
        """The object storage cannot be reached, or cut the connection: 503, as for a
        database away. (A disk's errors are OSErrors: below.)"""
        logging.getLogger("app").warning("storage unavailable: %s", type(exc).__name__)
        return await answer(conn, unavailable())

    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    async def database_unavailable(
        conn: Request | WebSocket, exc: Exception
    ) -> JSONResponse | None:
        """The database is away or busy: 503 at once, so clients retry, instead of a 500."""
        state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
        # A value past what a column holds (SQLSTATE class 22; SQLAlchemy's asyncpg
        # dialect raises it as a plain DBAPIError): the client's mistake.
        if isinstance(exc, DataError) or state.startswith("22"):
            return await answer(conn, invalid("A value is out of range", []))
        # SQLite's OperationalError also means a bad statement: only a lock is capacity.
        operational = isinstance(exc, OperationalError | InterfaceError) and (
            "sqlite" not in type(exc.orig).__module__ or "locked" in str(exc.orig)
        )
        if isinstance(exc, DBAPIError) and not (
            exc.connection_invalidated or operational or state.startswith(BUSY_STATES)
        ):
            raise exc
        logging.getLogger("app").warning("database unavailable: %s", type(exc).__name__)
        return await answer(conn, unavailable(retry=1 if state.startswith("40") else 5))
