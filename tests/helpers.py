"""What the tests (and bench/) share: users, threads, messages, WebSocket events, direct
reads of the database. The servers they start and drive are in tests/servers.py.

Nothing from app/ is imported at module level: conftest sets DATABASE_URL before the app
is first imported, and bench/ drives servers it starts itself, with their own settings.
"""

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
# The bucket the s3_client fixture creates on moto's server, and the keys moto takes.
S3_BUCKET = "uploads"
S3_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}

# --------------------------------------------------------------------------- marks

# conftest sets DATABASE_URL before this module is first imported.
ON_SQLITE = os.environ.get("DATABASE_URL", "sqlite").startswith("sqlite")
pg_only = pytest.mark.skipif(ON_SQLITE, reason="needs PostgreSQL")
sqlite_only = pytest.mark.skipif(not ON_SQLITE, reason="about SQLite's locking")

# The OWASP API Security Top 10 (2023) category a security test checks: `pytest -m owasp`.
API1 = pytest.mark.owasp("API1:2023 Broken Object Level Authorization")
API2 = pytest.mark.owasp("API2:2023 Broken Authentication")
API3 = pytest.mark.owasp("API3:2023 Broken Object Property Level Authorization")
API4 = pytest.mark.owasp("API4:2023 Unrestricted Resource Consumption")
API5 = pytest.mark.owasp("API5:2023 Broken Function Level Authorization")
API8 = pytest.mark.owasp("API8:2023 Security Misconfiguration")

# --------------------------------------------------------------------------- HTTP

# The fields of the contract's UserPublic and UserPrivate.
USER_PUBLIC = {"id", "full_name"}
USER_PRIVATE = {
    "id", "email", "full_name", "scopes", "is_active", "email_verified", "pending_email",
    "two_factor_enabled",
    "created_at", "updated_at",
}  # fmt: skip


class User(dict[str, Any]):
    """A signed-up user: its UserPrivate fields, plus `headers` and `token` of a login."""

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self["token"]["access_token"])


MakeUser = Callable[..., Awaitable[User]]  # the make_user fixture


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, scope: str | None = None
) -> httpx.Response:
    form = {"username": email, "password": password}
    if scope is not None:
        form["scope"] = scope
    return await client.post("/api/auth/token", data=form)


async def signup(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, full_name: str = "Test User"
) -> httpx.Response:
    body = {"email": email, "password": password, "full_name": full_name}
    return await client.post("/api/auth/signup", json=body)


async def me(client: httpx.AsyncClient, access_token: str) -> int:
    """The status of GET /api/users/me with this token: 200, or 401 once it is revoked."""
    return (await client.get("/api/users/me", headers=bearer(access_token))).status_code


async def sign_up(
    client: httpx.AsyncClient, email: str, full_name: str, password: str = PASSWORD
) -> User:
    """A new user, logged in."""
    r = await signup(client, email, password, full_name)
    assert r.status_code == 201, r.text
    token = await login(client, email, password)
    assert token.status_code == 200, token.text
    return User(r.json(), token=token.json())


async def new_thread(
    client: httpx.AsyncClient, owner: User, *members: User, title: str = "t"
) -> Any:
    body = {"title": title, "member_ids": [m["id"] for m in members]}
    r = await client.post("/api/threads", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def send(
    client: httpx.AsyncClient, user: User, thread_id: int, body: str = "hi", **fields: Any
) -> Any:
    """A new message; `fields`: more of the send's body (`reply_to_id`, `mention_ids`, …)."""
    r = await client.post(
        f"/api/threads/{thread_id}/messages", json={"body": body, **fields}, headers=user.headers
    )
    assert r.status_code == 201, r.text
    return r.json()


def multipart(
    data: bytes,
    filename: bytes | str | None = "a.bin",
    field: str = "file",
    content_type: str = "application/octet-stream",
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of one part, and its Content-Type header. Built by hand,
    so a file name's bytes go as they are (httpx would escape control characters)."""
    boundary = "----test" + os.urandom(8).hex()
    name = filename.encode() if isinstance(filename, str) else filename
    disposition = f'form-data; name="{field}"'.encode()
    if name is not None:
        disposition += b'; filename="' + name + b'"'
    head = f"--{boundary}\r\nContent-Disposition: ".encode() + disposition
    head += f"\r\nContent-Type: {content_type}\r\n\r\n".encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def upload(
    client: httpx.AsyncClient, user: User, data: bytes = b"hello", filename: str = "a.txt"
) -> Any:
    """POST /api/uploads: the Upload."""
    body, headers = multipart(data, filename)
    r = await client.post("/api/uploads", content=body, headers={**user.headers, **headers})
    assert r.status_code == 201, r.text
    return r.json()


async def page(client: httpx.AsyncClient, user: User, thread: Any, **params: Any) -> Any:
    """A page of a thread's messages."""
    url = f"/api/threads/{thread['id']}/messages"
    r = await client.get(url, params=params, headers=user.headers)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"items", "has_more"}
    return r.json()


def mass_assignment(other_id: int) -> dict[str, Any]:
    """Fields no client may set, with values that would matter if one could."""
    return {
        "id": 99999, "owner_id": other_id, "author_id": other_id, "thread_id": 1,
        "scopes": ["regular", "admin", "superuser"], "is_active": False, "deleted": True,
        "token_version": 7, "hashed_password": "x", "created_at": "2000-01-01T00:00:00Z",
        "edited_at": "2000-01-01T00:00:00Z", "last_read_message_id": 10**9,
        "unread_count": 5, "members": [],
    }  # fmt: skip


def encode_cursor(value: Any) -> str:
    """A page cursor as the API writes them: JSON in unpadded URL-safe base64."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# --------------------------------------------------------------------------- WebSocket


# The first frame on a subscribed socket: from here on every committed change arrives.
READY: dict[str, Any] = {"type": "ready", "thread_id": None, "data": {}}


def ws_url(server: str, token: str) -> str:
    """`server` is host:port."""
    return f"ws://{server}/api/ws?token={token}"


async def listen(server: str, user: User, **kwargs: Any) -> ClientConnection:
    """A socket of `user`, once subscribed."""
    ws = await connect(ws_url(server, user["token"]["access_token"]), **kwargs)
    # Subscribed: everything committed from here on will arrive.
    assert await next_event(ws) == READY
    return ws


def _known(event: Any, since: int | None) -> bool:
    """A change the client has seen already: committed before `ready`, it may come or not."""
    version = event.get("version")
    return since is not None and version is not None and version <= since


async def next_event(ws: ClientConnection, timeout: float = 5, since: int | None = None) -> Any:
    """The next event; with `since`, the next one but changes of a thread up to that version."""
    while _known(event := json.loads(await asyncio.wait_for(ws.recv(), timeout)), since):
        pass
    return event


async def in_order_or_1012(ws: ClientConnection, count: int, since: int) -> tuple[list[int], int]:
    """The versions of up to `count` events after `since`, which must come in version order;
    fewer only if the socket was closed with 1012 (an event came later than the hold: a
    busy machine). With them, the version the client has seen every change up to, from which
    the changes feed brings it the rest."""
    versions: list[int] = []
    try:
        while len(versions) < count:
            versions.append((await next_event(ws, since=since))["version"])
    except ConnectionClosed:
        assert ws.close_code == 1012, ws.close_code
    assert versions == sorted(set(versions)), "out of order, and the socket not told"
    unbroken = since
    while unbroken + 1 in versions:
        unbroken += 1
    return versions, unbroken


async def assert_silent(ws: ClientConnection, wait: float = 0.3, since: int | None = None) -> None:
    """Nothing arrives for `wait` seconds, but changes up to `since` that may come or not."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait):
            while True:
                event = json.loads(await ws.recv())
                assert _known(event, since), event


async def close_code(ws: ClientConnection, timeout: float = 5) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


# --------------------------------------------------------------------------- database


async def set_scopes(user_id: int, scopes: list[str]) -> None:
    from sqlalchemy import text

    from app.core.db import engine

    async with engine.begin() as conn:
        await conn.execute(
            text('UPDATE "user" SET scopes = :s WHERE id = :id'),
            {"s": json.dumps(scopes), "id": user_id},
        )


async def fetch(sql: str, **params: Any) -> list[Any]:
    """Read the database directly, to check what a request stored."""
    from sqlalchemy import text

    from app.core.db import engine

    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


@contextmanager
def count_statements() -> Iterator[list[str]]:
    """The SQL statements sent while the block runs (this process's engine)."""
    from sqlalchemy import event

    from app.core.db import engine

    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
