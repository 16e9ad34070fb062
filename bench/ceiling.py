"""The ceiling: the bench's read scenarios and the message POST in a plain ASGI app on
raw asyncpg, with no framework, no ORM and no validation library.

It does what the real app must do for each request, and nothing more:
- verify the HS256 bearer token (signature, alg, exp, type) and load the user row, checking
  is_active, token_version and the "regular" scope, as app/security.py does;
- run the same SQL statements as the app (see bench/README.md), on prepared statements;
- answer the same JSON.

What it leaves out, on purpose, since a hand-written raw-asyncpg app would: no BEGIN/COMMIT
around read-only requests (each statement is its own snapshot under READ COMMITTED
anyway), no SAVEPOINT around the message INSERT (no client_id race handling is needed for
the bench's sends, which carry no client_id), no pool reset query on release. JWTs are
verified with hmac/base64/json from the standard library instead of python-jose.

Served by uvicorn exactly as the app is (`python -m app` = uvicorn.run(...,
proxy_headers=True), access log on), so the two differ only in the application code:

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/DB PORT=8081 \
        .venv/bin/python bench/ceiling.py
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import asyncpg

SECRET = os.environ.get("SECRET_KEY", "dev-secret-key-change-me").encode()
DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
for _prefix in ("postgresql+asyncpg://", "postgres://"):
    DSN = DSN.replace(_prefix, "postgresql://")
POOL_SIZE = int(os.environ.get("DB_POOL_SIZE", "10")) + int(os.environ.get("DB_MAX_OVERFLOW", "10"))
# Not the app's channel: the app, idle beside the ceiling during a run, must not get (and
# spend its core on) the ceiling's events.
CHANNEL = os.environ.get("CEILING_CHANNEL", "bench_ceiling_events")

# The app's statements, as SQLAlchemy renders them (the "::INTEGER" casts aside).
USER_SQL = (
    'SELECT "user".id, "user".created_at, "user".updated_at, "user".deleted, "user".email, '
    '"user".full_name, "user".hashed_password, "user".scopes, "user".is_active, '
    '"user".token_version FROM "user" WHERE "user".deleted = false AND "user".id = $1'
)
MEMBER_THREAD_SQL = (
    "SELECT thread.id, thread.created_at, thread.updated_at, thread.deleted, thread.title, "
    "thread.owner_id, thread.last_message_at FROM thread "
    "WHERE thread.deleted = false AND thread.id = $1 AND (EXISTS (SELECT membership.id "
    "FROM membership WHERE membership.thread_id = thread.id AND membership.user_id = $2 "
    "AND membership.deleted = false))"
)
THREADS_SQL = (
    "SELECT thread.id, thread.created_at, thread.updated_at, thread.deleted, thread.title, "
    "thread.owner_id, thread.last_message_at, (SELECT count(*) AS count_1 FROM message "
    "WHERE message.thread_id = thread.id AND message.id > membership.last_read_message_id "
    "AND message.author_id != $1 AND message.deleted = false) AS anon_1, "
    "coalesce(thread.last_message_at, thread.created_at) AS coalesce_1 "
    "FROM thread JOIN membership ON membership.thread_id = thread.id "
    "WHERE thread.deleted = false AND membership.user_id = $2 AND membership.deleted = false "
    "ORDER BY coalesce(thread.last_message_at, thread.created_at) DESC, thread.id DESC "
    "LIMIT $3"
)
MEMBERS_SQL = (
    'SELECT "user".id, "user".full_name, membership.thread_id '
    'FROM "user" JOIN membership ON membership.user_id = "user".id '
    'WHERE "user".deleted = false AND membership.thread_id = ANY($1::integer[]) '
    "AND membership.deleted = false ORDER BY membership.id"
)
MESSAGE_COLUMNS = (
    "message.id, message.created_at, message.updated_at, message.deleted, message.thread_id, "
    "message.author_id, message.edited_at, message.body, message.client_id"
)
NEWEST_SQL = (
    f"SELECT {MESSAGE_COLUMNS} FROM message WHERE message.deleted = false "
    "AND message.thread_id = $1 ORDER BY message.id DESC LIMIT $2"
)
BEFORE_SQL = (
    f"SELECT {MESSAGE_COLUMNS} FROM message WHERE message.deleted = false "
    "AND message.thread_id = $1 AND message.id < $2 ORDER BY message.id DESC LIMIT $3"
)
AFTER_SQL = (
    f"SELECT {MESSAGE_COLUMNS} FROM message WHERE message.deleted = false "
    "AND message.thread_id = $1 AND message.id > $2 ORDER BY message.id LIMIT $3"
)
TOUCH_THREAD_SQL = "UPDATE thread SET updated_at=$1, last_message_at=$2 WHERE thread.id = $3"
INSERT_MESSAGE_SQL = (
    "INSERT INTO message (created_at, updated_at, deleted, thread_id, author_id, edited_at, "
    "body, client_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING message.id"
)
READ_MARKER_SQL = (
    "UPDATE membership SET updated_at=$1, last_read_message_id=$2 "
    "WHERE membership.thread_id = $3 AND membership.user_id = $4 "
    "AND membership.deleted = false AND membership.last_read_message_id < $5"
)
NOTIFY_SQL = "SELECT pg_notify($1, p) FROM unnest(CAST($2 AS text[])) AS p"

pool: asyncpg.Pool | None = None


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


def iso(value: datetime | None) -> str | None:
    """pydantic's rendering of an aware UTC datetime: ISO 8601 with a Z."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_jwt(token: str) -> dict[str, Any]:
    """HS256 only (the header is checked, never trusted), a valid signature, not expired."""
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        signing_input = f"{header_b64}.{payload_b64}".encode()
        expected = hmac.new(SECRET, signing_input, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, b64decode(signature_b64)):
            raise ValueError
        if json.loads(b64decode(header_b64)).get("alg") != "HS256":
            raise ValueError
        claims = json.loads(b64decode(payload_b64))
        if not isinstance(claims, dict) or int(claims["exp"]) <= time.time():
            raise ValueError
        claims["sub"], claims["ver"] = int(claims["sub"]), int(claims["ver"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise HTTPError(401, "Could not validate credentials") from exc
    if claims.get("type") != "access":
        raise HTTPError(401, "Could not validate credentials")
    return claims


def bearer(scope: dict[str, Any]) -> dict[str, Any]:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token:
                return verify_jwt(token)
    raise HTTPError(401, "Not authenticated")


async def current_user(con: asyncpg.Connection, claims: dict[str, Any]) -> asyncpg.Record:
    """The live user the token speaks for, holding the "regular" scope: get_current_user."""
    user = await con.fetchrow(USER_SQL, claims["sub"])
    if user is None or not user["is_active"] or user["token_version"] != claims["ver"]:
        raise HTTPError(401, "Could not validate credentials")
    granted = set(str(claims.get("scope", "")).split()) & set(json.loads(user["scopes"]))
    if "regular" not in granted:
        raise HTTPError(403, "Not enough permissions")
    return user


async def member_thread(con: asyncpg.Connection, thread_id: int, user_id: int) -> asyncpg.Record:
    thread = await con.fetchrow(MEMBER_THREAD_SQL, thread_id, user_id)
    if thread is None:
        raise HTTPError(404, "Thread not found")
    return thread


def user_out(user: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": user["id"],
        "created_at": iso(user["created_at"]),
        "updated_at": iso(user["updated_at"]),
        "email": user["email"],
        "full_name": user["full_name"],
        "scopes": json.loads(user["scopes"]),
        "is_active": user["is_active"],
    }


def message_out(m: Any) -> dict[str, Any]:
    return {
        "id": m["id"],
        "created_at": iso(m["created_at"]),
        "updated_at": iso(m["updated_at"]),
        "thread_id": m["thread_id"],
        "author_id": m["author_id"],
        "edited_at": iso(m["edited_at"]),
        "body": m["body"],
        "client_id": m["client_id"],
    }


def encode_cursor(values: list[Any]) -> str:
    raw = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def query_int(query: dict[str, str], name: str, default: int | None, lo: int, hi: int) -> Any:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise HTTPError(422, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise HTTPError(422, f"{name} out of range")
    return value


async def users_me(scope: dict[str, Any], _: bytes) -> tuple[int, Any]:
    claims = bearer(scope)
    assert pool is not None
    async with pool.acquire() as con:
        user = await current_user(con, claims)
    return 200, user_out(user)


async def list_threads(scope: dict[str, Any], _: bytes) -> tuple[int, Any]:
    claims = bearer(scope)
    query = dict(parse_qsl(scope["query_string"].decode()))
    limit = query_int(query, "limit", 50, 1, 200)
    if "cursor" in query:
        raise HTTPError(400, "cursors are not part of the bench")
    assert pool is not None
    async with pool.acquire() as con:
        user = await current_user(con, claims)
        rows = await con.fetch(THREADS_SQL, user["id"], user["id"], limit + 1)
        page = rows[:limit]
        members: dict[int, list[dict[str, Any]]] = {r["id"]: [] for r in page}
        if page:
            for m in await con.fetch(MEMBERS_SQL, list(members)):
                members[m["thread_id"]].append({"id": m["id"], "full_name": m["full_name"]})
    items = [
        {
            "id": t["id"],
            "created_at": iso(t["created_at"]),
            "updated_at": iso(t["updated_at"]),
            "title": t["title"],
            "owner_id": t["owner_id"],
            "members": members[t["id"]],
            "last_message_at": iso(t["last_message_at"]),
            "unread_count": t["anon_1"],
        }
        for t in page
    ]
    cursor = None
    if len(rows) > limit:
        last = page[-1]
        cursor = encode_cursor([last["coalesce_1"], last["id"]])
    return 200, {"items": items, "next_cursor": cursor}


async def list_messages(scope: dict[str, Any], _: bytes, thread_id: int) -> tuple[int, Any]:
    claims = bearer(scope)
    query = dict(parse_qsl(scope["query_string"].decode()))
    limit = query_int(query, "limit", 50, 1, 200)
    before = query_int(query, "before", None, 1, 2**31 - 1)
    after = query_int(query, "after", None, 0, 2**31 - 1)
    if before is not None and after is not None:
        raise HTTPError(422, "Give before or after, not both")
    assert pool is not None
    async with pool.acquire() as con:
        user = await current_user(con, claims)
        thread = await member_thread(con, thread_id, user["id"])
        if after is not None:
            rows = await con.fetch(AFTER_SQL, thread["id"], after, limit + 1)
        elif before is not None:
            rows = await con.fetch(BEFORE_SQL, thread["id"], before, limit + 1)
        else:
            rows = await con.fetch(NEWEST_SQL, thread["id"], limit + 1)
    page = rows[:limit] if after is not None else rows[:limit][::-1]
    return 200, {"items": [message_out(m) for m in page], "has_more": len(rows) > limit}


async def send_message(scope: dict[str, Any], body: bytes, thread_id: int) -> tuple[int, Any]:
    claims = bearer(scope)
    try:
        data = json.loads(body)
        text = data["body"]
        if not isinstance(text, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise HTTPError(422, "body: a string is required") from None
    text = text.strip()
    if not 1 <= len(text) <= 4000:
        raise HTTPError(422, "body: 1 to 4000 characters")
    client_id = data.get("client_id")
    if client_id is not None:
        raise HTTPError(422, "client_id is not part of the bench")
    assert pool is not None
    async with pool.acquire() as con, con.transaction():
        user = await current_user(con, claims)
        thread = await member_thread(con, thread_id, user["id"])
        now = datetime.now(UTC)
        # The thread row first: its lock makes sends to one thread take turns, as in the app.
        await con.execute(TOUCH_THREAD_SQL, now, now, thread["id"])
        message_id = await con.fetchval(
            INSERT_MESSAGE_SQL, now, now, False, thread["id"], user["id"], None, text, None
        )
        await con.execute(READ_MARKER_SQL, now, message_id, thread["id"], user["id"], message_id)
        out = {
            "id": message_id,
            "created_at": iso(now),
            "updated_at": iso(now),
            "thread_id": thread["id"],
            "author_id": user["id"],
            "edited_at": None,
            "body": text,
            "client_id": None,
        }
        event = {"type": "message.created", "thread_id": thread["id"], "data": out}
        await con.execute(NOTIFY_SQL, CHANNEL, [json.dumps(event, separators=(",", ":"))])
    return 201, out


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def reply(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Any, send: Any) -> None:
    global pool
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            pool = await asyncpg.create_pool(
                DSN,
                min_size=min(10, POOL_SIZE),
                max_size=POOL_SIZE,
                reset=None if os.environ.get("CEILING_POOL_RESET") else _no_reset,
            )
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if pool is not None:
                await pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _no_reset(_: asyncpg.Connection) -> None:
    """Connections come back with no open transaction, listener or setting to undo."""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    method, path = scope["method"], scope["path"]
    body = await read_body(receive) if method == "POST" else b""
    try:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/api/users/me":
            status, payload = await users_me(scope, body)
        elif method == "GET" and path == "/api/threads":
            status, payload = await list_threads(scope, body)
        elif len(parts) == 4 and parts[:2] == ["api", "threads"] and parts[3] == "messages":
            try:
                thread_id = int(parts[2])
            except ValueError:
                raise HTTPError(422, "thread_id must be an integer") from None
            if method == "GET":
                status, payload = await list_messages(scope, body, thread_id)
            elif method == "POST":
                status, payload = await send_message(scope, body, thread_id)
            else:
                raise HTTPError(405, "Method Not Allowed")
        elif method == "GET" and path == "/api/health":
            status, payload = 200, {"status": "ok"}
        else:
            raise HTTPError(404, "Not Found")
    except HTTPError as exc:
        status, payload = exc.status, {"detail": exc.detail}
    await reply(send, status, payload)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8081")),
        proxy_headers=True,
    )
