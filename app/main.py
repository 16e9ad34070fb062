import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import realtime
from app.db import SessionMaker, engine, migrate_to_head
from app.models.user import SCOPES, User
from app.realtime import hub
from app.routers import auth, health, messages, threads, users
from app.routers.users import find_by_email
from app.security import hash_password
from app.settings import settings

log = logging.getLogger("app.access")


async def ensure_first_superuser() -> None:
    email, password = settings.first_superuser_email, settings.first_superuser_password
    if not (email and password):
        return
    try:
        async with SessionMaker() as session, session.begin():
            user = await find_by_email(session, email)
            if user is None:
                hashed = await hash_password(password)
                user = User.model_validate(
                    {"email": email, "full_name": "Superuser", "hashed_password": hashed}
                )
            user.scopes, user.is_active = list(SCOPES), True
            session.add(user)
    except IntegrityError:
        pass  # another process starting at the same time created it


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    if settings.is_sqlite:  # the embedded default needs no setup step
        await asyncio.to_thread(migrate_to_head)
    await ensure_first_superuser()
    await hub.start()
    yield
    await hub.stop()
    await engine.dispose()


MAX_BODY_SIZE = 1024 * 1024
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
JSON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


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
                for name, value in JSON_HEADERS:
                    headers.setdefault(name.decode(), value.decode())
                if scope["path"].startswith("/api/"):  # the docs pages need their scripts
                    headers.setdefault(API_CSP[0].decode(), API_CSP[1].decode())
            elif message["type"] == "websocket.accept":
                code = 101
            await send(message)

        try:
            if headers.get(b"content-length", b"0").isdigit() and (
                int(headers.get(b"content-length", b"0")) > MAX_BODY_SIZE
            ):  # refused before it is read; streamed bodies are counted by FastAPI
                too_large = JSONResponse({"detail": "Content Too Large"}, status_code=413)
                await too_large(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            fields = {
                "request_id": request_id,
                "method": scope.get("method", "WS"),
                "path": scope["path"],
                "status": code or 500,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0],
            }
            log.info("request", extra={"fields": fields})


app = FastAPI(
    title="FastAPI Boilerplate",
    summary="A messenger as the example application of an async FastAPI template.",
    lifespan=lifespan,
)
if settings.cors_origins:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After"],
    )
app.add_middleware(RequestLog)


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
    if isinstance(exc, DBAPIError) and not (
        exc.connection_invalidated or type(exc).__name__ in ("OperationalError", "InterfaceError")
    ):
        raise exc
    logging.getLogger("app").warning("database unavailable: %s", type(exc).__name__)
    return JSONResponse(
        {"detail": "Service temporarily unavailable"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


api = APIRouter(prefix="/api", max_body_size=MAX_BODY_SIZE)
for module in (auth, users, threads, messages, realtime, health):
    api.include_router(module.router)
app.include_router(api)
