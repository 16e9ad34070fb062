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
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
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


DESCRIPTION = """
A messenger, as the example application of an async FastAPI template.

**Log in** with *Authorize*: your email as username, your password, and optionally the
scopes to narrow the token to (none ticked: all you hold). Every route below says which
scope it needs.

**Paging.** Lists answer `{"items": [...], "next_cursor": ...}`: pass `next_cursor` back as
`cursor` until it is `null`. Message history pages by message id instead (`before`,
`after`) and answers `has_more`.

**Not found vs forbidden.** Something you may not see answers 404, exactly like something
that does not exist; something you may see but not change answers 403.

## Realtime: `GET /api/ws?token=<access token>` (WebSocket)

Swagger cannot list WebSocket routes, so here it is. Connect with an access token in the
query. A bad, expired or revoked token: the socket is accepted, then closed with code
**4401**; a token that expires or is revoked while connected closes it the same way.
The server then pushes JSON events for every thread you are a member of, in commit order
per thread, each sent only after its change is committed:

| `type` | `data` |
|---|---|
| `message.created`, `message.updated`, `message.deleted` | the Message |
| `thread.created`, `thread.updated`, `thread.deleted` | the Thread, with `unread_count` 0 |
| `member.added`, `member.removed` | `{"user_id": ...}` |

```json
{"type": "message.created", "thread_id": 7, "data": {"id": 42, "thread_id": 7, "body": "hi", ...}}
```

Close codes: **4401** bad or revoked token; **1013** the client read too slowly and fell
too far behind; **1012** the server may have missed events (reconnect, then catch up with
`GET /api/threads/{id}/messages?after=<last id>`). Clients send nothing; the server pings.
Unread counts differ per reader, so events carry 0: read yours from `GET /api/threads`.
"""

TAGS = [
    {"name": "auth", "description": "Sign up, log in (OAuth2 password flow), refresh, log out."},
    {"name": "users", "description": "Your profile; finding others; managing users (admin)."},
    {
        "name": "threads",
        "description": "Conversations of several users, their members and "
        "read markers. Only members see a thread.",
    },
    {
        "name": "messages",
        "description": "A thread's messages: send (idempotent with "
        "`client_id`), page, edit, delete.",
    },
    {"name": "realtime", "description": "WebSocket events; see the description above."},
    {"name": "health", "description": "Liveness and readiness probes."},
]

# Swagger UI and ReDoc are served from the app itself (the fastapi-offline package ships
# their files), so the docs work without a CDN: offline, behind a strict proxy.
app = FastAPIOffline(
    title="FastAPI Boilerplate",
    description=DESCRIPTION,
    version="0.1.0",
    openapi_tags=TAGS,
    lifespan=lifespan,
    swagger_ui_parameters={"validatorUrl": None},  # it would call out to swagger.io
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
    # SQLSTATE classes 08 (connection), 53 (too many connections...), 57P (shutting down).
    state = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
    if isinstance(exc, DBAPIError) and not (
        exc.connection_invalidated
        or isinstance(exc, OperationalError | InterfaceError)
        or state.startswith(("08", "53", "57P"))
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
