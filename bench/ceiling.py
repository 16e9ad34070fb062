"""The ceiling: the bench's scenarios as a plain ASGI app on raw asyncpg (no framework, no ORM,
no validation library), served by uvicorn as `python -m app` is.

Per request it does what the app must do, and nothing more: verify the HS256 bearer token
(signature, alg, exp, type; stdlib hmac instead of python-jose), load the caller's row and
check token_version and the "regular" scope (app/core/deps.py, Bearer), run the app's own
SQL (below) on prepared statements, one round trip each and in the app's order, and answer
the same JSON. A page: the messages (the membership asked in the same statement; the thread
asked only when there are none), then their reactions, mentions and attachments, one
statement each even when they find nothing. A send (a plain message, as the bench's are):
one statement for the sender's send count (the rate limit), the thread's row lock and
version, the sender's membership's lock, the message (stamped no earlier than the thread's
last) and the sender's read marker, committed as it runs; then a NOTIFY of the
`message.created` event in the app's wire format.

It loads the caller's row on every request: the app remembers it per process
(app.core.accounts.tokens.Callers, kept right by LISTEN), which a plain asyncpg app has
not. It leaves out what the bench's requests never make the app do: BEGIN/COMMIT around
reads (the app reads in autocommit too); a send's reply, mention and attachment checks and
the writes of its mentions and attachments (no reply_to_id, mention_ids or attachment_ids
are sent, and the app runs no statement for them then); the re-read of a message whose
client_id was sent before (no client_id is sent); the Retry-After header of a 429 (the
bench's limit is never reached); the asyncpg pool's reset query. Its pool is the app's
size; its NOTIFY goes to a channel of its own.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/DB PORT=8081 .venv/bin/python bench/ceiling.py
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import uvicorn

SECRET = os.environ.get("SECRET_KEY", "dev-secret-key-change-me").encode()
DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DSN = DSN.replace("postgresql+asyncpg://", "postgresql://")
# The app's pool (app/core/settings.py) and send limit (app/messenger/settings.py), from
# the same settings.
POOL_SIZE = int(os.environ.get("DB_POOL_SIZE", "20")) + int(os.environ.get("DB_MAX_OVERFLOW", "0"))
MESSAGES_PER_MINUTE = int(os.environ.get("MESSAGES_PER_MINUTE", "120"))
# Not the app's channel: the app, idle beside the ceiling during a run, must not get (and
# spend its core on) the ceiling's events.
CHANNEL = "bench_ceiling_events"
MINUTE = timedelta(seconds=60)  # the send limit's window

# ---------------------------------------------------------------------------------------
# THE APP'S STATEMENTS, as SQLAlchemy renders them (its "::INTEGER" casts, and literals it
# sends as parameters, left out). When app/ changes what it sends (a column, a join, a
# statement more), change them here: the ceiling must keep doing what the app must do, no
# less. To see what it sends: tests/helpers.py count_statements around a request.
# ---------------------------------------------------------------------------------------
USER_SQL = (  # the caller (Users._for_token): no password hash or TOTP secret; login live
    'SELECT "user".id, "user".created_at, "user".updated_at, "user".deleted, "user".email, '
    '"user".full_name, "user".scopes, "user".is_active, "user".email_verified, '
    '"user".pending_email, "user".token_version, "user".two_factor_enabled FROM "user" '
    'JOIN auth_session ON auth_session.user_id = "user".id WHERE "user".id = $1 '
    'AND auth_session.id = $2 AND "user".deleted = false AND auth_session.deleted = false '
    'AND "user".is_active = true'
)
THREAD_COLUMNS = (
    "thread.id, thread.created_at, thread.updated_at, thread.title, thread.owner_id, "
    "thread.last_message_at, thread.version"
)
MEMBER_THREAD_SQL = (  # MemberThread: the thread, if the user is a member
    f"SELECT {THREAD_COLUMNS} FROM thread WHERE thread.id = $1 AND thread.deleted = false "
    "AND (EXISTS (SELECT * FROM membership WHERE membership.thread_id = thread.id "
    "AND membership.user_id = $2 AND membership.deleted = false))"
)
THREADS_SQL = (  # GET /api/threads: a page, with its unread messages and unread mentions
    f"SELECT {THREAD_COLUMNS}, (SELECT count(*) AS count_1 FROM message "
    "WHERE message.thread_id = thread.id AND message.id > membership.last_read_message_id "
    "AND message.author_id != membership.user_id AND message.deleted = false) AS unread_count, "
    "(SELECT count(*) AS count_2 FROM mention JOIN message ON message.id = mention.message_id "
    "WHERE mention.user_id = membership.user_id AND mention.thread_id = thread.id "
    "AND mention.message_id > membership.last_read_message_id "
    "AND message.deleted = false) AS unread_mention_count, "
    "coalesce(thread.last_message_at, thread.created_at) AS activity "
    "FROM thread JOIN membership ON membership.thread_id = thread.id "
    "WHERE membership.user_id = $1 AND membership.deleted = false AND thread.deleted = false "
    "ORDER BY coalesce(thread.last_message_at, thread.created_at) DESC, thread.id DESC "
    "LIMIT $2"
)
MEMBERS_SQL = (  # ... and their members
    'SELECT membership.thread_id, "user".id, "user".full_name '
    'FROM membership JOIN "user" ON "user".id = membership.user_id '
    "WHERE membership.thread_id = ANY($1::integer[]) AND membership.deleted = false "
    "ORDER BY membership.id"
)
MEMBER_SQL = (  # Messages' reader: a live thread, the caller a live member
    "AND (EXISTS (SELECT * FROM thread WHERE thread.id = $1::INTEGER AND thread.deleted = false "
    "AND (EXISTS (SELECT * FROM membership WHERE membership.thread_id = thread.id "
    "AND membership.user_id = $2::INTEGER AND membership.deleted = false)))) "
)
MESSAGE_COLUMNS = (
    "message.id, message.created_at, message.updated_at, message.thread_id, "
    "message.author_id, message.body, message.client_id, message.edited_at, message.version, "
    "message.reply_to_id"
)
# GET .../messages: the newest page, on the (thread_id, id) index, the caller's membership
# asked in the page's own statement (MemberThread's, only when the page is empty)
NEWEST_SQL = (
    f"SELECT {MESSAGE_COLUMNS} FROM message WHERE message.thread_id = ANY (ARRAY[$1::INTEGER]) "
    + MEMBER_SQL
    + "AND message.deleted = false ORDER BY message.thread_id DESC, message.id DESC LIMIT $3"
)
BEFORE_SQL = (  # GET .../messages?before=: an older page
    f"SELECT {MESSAGE_COLUMNS} FROM message WHERE message.thread_id = ANY (ARRAY[$1::INTEGER]) "
    + MEMBER_SQL
    + "AND message.deleted = false AND message.id < $3 "
    + "ORDER BY message.thread_id DESC, message.id DESC LIMIT $4"
)
REACTIONS_SQL = (  # ... the page's reactions, one row per emoji of each message
    "SELECT reaction.message_id, reaction.emoji, count(*) AS uses, max(CASE WHEN "
    "(reaction.user_id = $1::INTEGER) THEN 1 ELSE 0 END) AS me FROM reaction "
    "WHERE reaction.message_id = ANY ($2::INTEGER[]) GROUP BY reaction.message_id, "
    "reaction.emoji ORDER BY reaction.message_id, min(reaction.place)"
)
MENTIONS_SQL = (  # ... its mentions (Mentions.of)
    "SELECT mention.message_id, mention.user_id FROM mention "
    "WHERE mention.message_id = ANY ($1::INTEGER[]) ORDER BY mention.message_id, mention.user_id"
)
ATTACHMENTS_SQL = (  # ... and its attachments (Uploads.of)
    "SELECT upload.message_id, upload.id, upload.filename, upload.content_type, upload.size, "
    "upload.sha256, upload.created_at FROM upload WHERE upload.message_id = ANY "
    "($1::INTEGER[]) AND upload.deleted = false ORDER BY upload.message_id, upload.position"
)
# POST .../messages (Messages.send, a plain message): one statement
# (message_send.send_statement) counts the send against the sender's limit, takes the
# thread's row lock and the sender's membership's, inserts the message at the next version,
# counts it on the thread and moves the sender's read marker, committed as it runs; then
# the event's NOTIFY.
SEND_SQL = (  # $1 now, $2 author, $3 body, $4 client_id, $5 reply_to_id, $6 thread,
    # $7 the limit's key, $8 the limit's window start if it passed, $9 sends allowed
    "WITH counted AS (INSERT INTO login_counter (key, count, window_start) "
    "VALUES ($7::VARCHAR, 1, $1) ON CONFLICT (key) DO UPDATE SET count = CASE WHEN "
    "(login_counter.window_start <= $8) THEN 1 ELSE login_counter.count + 1 END, "
    "window_start = CASE WHEN (login_counter.window_start <= $8) THEN $1 "
    "ELSE login_counter.window_start END "
    "RETURNING login_counter.count, login_counter.window_start), "
    "locked AS (SELECT thread.id AS id, thread.version AS version, "
    "thread.last_message_at AS last_message_at FROM thread "
    "JOIN membership ON membership.thread_id = thread.id "
    "WHERE (SELECT counted.count FROM counted) <= $9 AND thread.id = $6 "
    "AND thread.deleted = false AND membership.user_id = $2 "
    "AND membership.deleted = false FOR UPDATE OF thread, membership), "
    "inserted AS (INSERT INTO message (thread_id, author_id, body, client_id, reply_to_id, "
    "version, created_at, updated_at, deleted) SELECT locked.id AS id, $2 AS anon_1, "
    "$3::VARCHAR AS anon_2, $4::VARCHAR AS anon_3, $5::INTEGER AS anon_4, "
    "locked.version + 1 AS anon_5, greatest($1, locked.last_message_at) AS greatest_1, "
    "greatest($1, locked.last_message_at) AS greatest__1, false AS anon_7 FROM locked "
    "ON CONFLICT (thread_id, author_id, client_id) DO NOTHING "
    f"RETURNING {MESSAGE_COLUMNS}), "
    "bumped AS (UPDATE thread SET updated_at=inserted.created_at, "
    "last_message_at=inserted.created_at, version=inserted.version "
    "FROM inserted WHERE thread.id = inserted.thread_id), "
    "marked AS (UPDATE membership SET updated_at=inserted.created_at, "
    "last_read_message_id=inserted.id "
    "FROM inserted WHERE membership.thread_id = inserted.thread_id "
    "AND membership.user_id = inserted.author_id AND membership.deleted = false "
    "AND membership.last_read_message_id < inserted.id) "
    "SELECT counted.count AS sent, counted.window_start AS since, locked.id AS locked_id, "
    "inserted.id, inserted.created_at, inserted.updated_at, inserted.thread_id, "
    "inserted.author_id, inserted.body, inserted.client_id, inserted.edited_at, "
    "inserted.version, inserted.reply_to_id "
    "FROM counted LEFT OUTER JOIN locked ON true LEFT OUTER JOIN inserted ON true"
)
NOTIFY_SQL = "SELECT pg_notify($1, p) FROM unnest(CAST($2 AS text[])) AS p"
# ---------------------------------------------------------------------------------------

pool: Any = None  # an asyncpg.Pool once started


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


def iso(value: datetime | None) -> str | None:
    """pydantic's rendering of an aware UTC datetime: ISO 8601 with a Z."""
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def claims_of(scope: dict[str, Any]) -> dict[str, Any]:
    """The bearer token's claims: HS256 only (the header is checked, never trusted), a
    valid signature, not expired, an access token."""
    token = ""
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            token = token if kind.lower() == "bearer" else ""
    if not token:
        raise HTTPError(401, "Not authenticated")
    try:
        header, payload, signature = token.split(".")
        expected = hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, b64decode(signature)):
            raise ValueError
        if json.loads(b64decode(header)).get("alg") != "HS256":
            raise ValueError
        claims = json.loads(b64decode(payload))
        if int(claims["exp"]) <= time.time() or claims.get("type") != "access":
            raise ValueError
        claims["sub"], claims["ver"] = int(claims["sub"]), int(claims["ver"])
        claims["sid"] = int(claims["sid"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise HTTPError(401, "Could not validate credentials") from exc
    return dict(claims)


async def current_user(con: Any, claims: dict[str, Any]) -> Any:
    """The live user the token speaks for, holding the "regular" scope (deps.Bearer)."""
    user = await con.fetchrow(USER_SQL, claims["sub"], claims["sid"])
    if user is None or user["token_version"] != claims["ver"]:
        raise HTTPError(401, "Could not validate credentials")
    if "regular" not in set(str(claims.get("scope", "")).split()) & set(json.loads(user["scopes"])):
        raise HTTPError(403, "Not enough permissions")
    return user


def message_out(m: Any) -> dict[str, Any]:
    return {
        "id": m["id"], "created_at": iso(m["created_at"]), "updated_at": iso(m["updated_at"]),
        "thread_id": m["thread_id"], "author_id": m["author_id"],
        "body": m["body"], "client_id": m["client_id"], "edited_at": iso(m["edited_at"]),
        "version": m["version"], "reply_to_id": m["reply_to_id"], "reactions": [],
        "mention_ids": [], "attachments": [],
    }  # fmt: skip


def query_int(scope: dict[str, Any], name: str, default: int | None, hi: int) -> int | None:
    query = dict(parse_qsl(scope["query_string"].decode()))
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise HTTPError(422, f"{name} must be an integer") from None
    if not 1 <= value <= hi:
        raise HTTPError(422, f"{name} out of range")
    return value


async def users_me(scope: dict[str, Any]) -> tuple[int, Any]:
    claims = claims_of(scope)
    async with pool.acquire() as con:
        u = await current_user(con, claims)
    return 200, {
        "id": u["id"], "created_at": iso(u["created_at"]), "updated_at": iso(u["updated_at"]),
        "email": u["email"], "full_name": u["full_name"], "scopes": json.loads(u["scopes"]),
        "is_active": u["is_active"], "email_verified": u["email_verified"],
        "pending_email": u["pending_email"], "two_factor_enabled": u["two_factor_enabled"],
    }  # fmt: skip


async def list_threads(scope: dict[str, Any]) -> tuple[int, Any]:
    claims = claims_of(scope)
    limit = query_int(scope, "limit", 50, 200) or 50
    async with pool.acquire() as con:
        user = await current_user(con, claims)
        rows = await con.fetch(THREADS_SQL, user["id"], limit + 1)
        page = rows[:limit]
        members: dict[int, list[dict[str, Any]]] = {r["id"]: [] for r in page}
        if page:
            for m in await con.fetch(MEMBERS_SQL, list(members)):
                members[m["thread_id"]].append({"id": m["id"], "full_name": m["full_name"]})
    items = [
        {"id": t["id"], "created_at": iso(t["created_at"]), "updated_at": iso(t["updated_at"]),
         "title": t["title"], "owner_id": t["owner_id"], "members": members[t["id"]],
         "last_message_at": iso(t["last_message_at"]), "version": t["version"],
         "unread_count": t["unread_count"], "unread_mention_count": t["unread_mention_count"]}
        for t in page
    ]  # fmt: skip
    cursor = None
    if len(rows) > limit:  # the keyset cursor, encoded as app/repository.py does
        key = [page[-1]["activity"].isoformat(), page[-1]["id"]]
        cursor = base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
    return 200, {"items": items, "next_cursor": cursor}


async def list_messages(scope: dict[str, Any], thread_id: int) -> tuple[int, Any]:
    claims = claims_of(scope)
    limit = query_int(scope, "limit", 50, 200) or 50
    before = query_int(scope, "before", None, 2**31 - 1)
    async with pool.acquire() as con:
        user = await current_user(con, claims)
        if before is None:
            rows = await con.fetch(NEWEST_SQL, thread_id, user["id"], limit + 1)
        else:
            rows = await con.fetch(BEFORE_SQL, thread_id, user["id"], before, limit + 1)
        if not rows and await con.fetchrow(MEMBER_THREAD_SQL, thread_id, user["id"]) is None:
            raise HTTPError(404, "Thread not found")
        page = [message_out(m) for m in rows[:limit][::-1]]
        ids = [m["id"] for m in page]
        # The app fills in a page's extras with one statement each (Messages.filled).
        reactions = await con.fetch(REACTIONS_SQL, user["id"], ids) if ids else []
        mentions = await con.fetch(MENTIONS_SQL, ids) if ids else []
        attachments = await con.fetch(ATTACHMENTS_SQL, ids) if ids else []
    by_id = {m["id"]: m for m in page}
    for r in reactions:
        by_id[r["message_id"]]["reactions"].append(
            {"emoji": r["emoji"], "count": r["uses"], "me": bool(r["me"])}
        )
    for r in mentions:
        by_id[r["message_id"]]["mention_ids"].append(r["user_id"])
    for r in attachments:
        by_id[r["message_id"]]["attachments"].append(
            {"id": r["id"], "filename": r["filename"], "content_type": r["content_type"],
             "size": r["size"], "sha256": r["sha256"], "created_at": iso(r["created_at"])}
        )  # fmt: skip
    return 200, {"items": page, "has_more": len(rows) > limit}


async def send_message(scope: dict[str, Any], body: bytes, thread_id: int) -> tuple[int, Any]:
    claims = claims_of(scope)
    try:
        data = json.loads(body)
        text = data["body"].strip()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise HTTPError(422, "body: a string is required") from None
    if not 1 <= len(text) <= 4000 or data.get("client_id") is not None:
        raise HTTPError(422, "body: 1 to 4000 characters, and no client_id in the bench")
    async with pool.acquire() as con:
        user = await current_user(con, claims)
        now = datetime.now(UTC)
        # Committed as it runs (no BEGIN/COMMIT), as the app's plain send. Sends to one
        # thread take turns on its row lock, for this statement.
        key, allowed = f"send:{user['id']}", MESSAGES_PER_MINUTE
        args = (now, user["id"], text, None, None, thread_id, key, now - MINUTE, allowed)
        row = await con.fetchrow(SEND_SQL, *args)
        if row["sent"] > allowed:
            raise HTTPError(429, "Too many requests; try again later")
        if row["locked_id"] is None:
            raise HTTPError(404, "Thread not found")
        out = message_out(row)
        # Event.wire of a ThreadEvent (app/core/events.py, app/messenger/events.py), sent
        # after the commit as the app's channel does (app/core/channels.py, Notify).
        event = {"type": "thread", "kind": "message.created", "thread_id": thread_id,
                 "data": out, "version": row["version"], "skip": []}  # fmt: skip
        await con.execute(NOTIFY_SQL, CHANNEL, [json.dumps(event, separators=(",", ":"))])
    return 201, out


async def route(method: str, path: str, scope: dict[str, Any], body: bytes) -> tuple[int, Any]:
    parts = path.strip("/").split("/")
    if method == "GET" and path == "/api/health":
        return 200, {"status": "ok"}
    if method == "GET" and path == "/api/users/me":
        return await users_me(scope)
    if method == "GET" and path == "/api/threads":
        return await list_threads(scope)
    if len(parts) == 4 and parts[:2] == ["api", "threads"] and parts[3] == "messages":
        if not parts[2].isdigit():
            raise HTTPError(422, "thread_id must be an integer")
        if method == "GET":
            return await list_messages(scope, int(parts[2]))
        if method == "POST":
            return await send_message(scope, body, int(parts[2]))
        raise HTTPError(405, "Method Not Allowed")
    raise HTTPError(404, "Not Found")


async def no_reset(_: Any) -> None:
    """On release: connections come back with nothing to undo, so no reset query."""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global pool
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            pool = await asyncpg.create_pool(
                DSN, min_size=min(10, POOL_SIZE), max_size=POOL_SIZE, reset=no_reset
            )
            await send({"type": "lifespan.startup.complete"})
        await pool.close()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    try:
        status, payload = await route(scope["method"], scope["path"], scope, body)
    except HTTPError as exc:
        status, payload = exc.status, {"detail": exc.detail}
    data = json.dumps(payload, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8081"))
    uvicorn.run(app, host=host, port=port, proxy_headers=True)
