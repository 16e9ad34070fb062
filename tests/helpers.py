"""What the tests (and bench/) share: a real server process, users, threads, messages,
WebSocket events, direct reads of the database.

Nothing from app/ is imported at module level: conftest sets DATABASE_URL before the app
is first imported, and bench/ drives servers it starts itself, with their own settings.
"""

import asyncio
import base64
import email
import email.policy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
# The bucket the s3_client fixture creates on moto's server, and the keys moto takes.
S3_BUCKET = "uploads"
S3_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
APP = (sys.executable, "-m", "app")
# uvicorn as its own command line runs the app: its logging config, its access log.
PLAIN_UVICORN = (sys.executable, "-m", "uvicorn", "app.main:app", "--port", "{port}")

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

# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_tracked(dest: Path, leave_out: Sequence[str] = ()) -> None:
    """The repository's tracked files, as they are on disk, into `dest`; paths starting with
    one of `leave_out` stay behind."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if name.startswith(tuple(leave_out)) or not source.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the suite's database and mode, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "ENVIRONMENT"}}
    return {**env, **extra}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def start(
    cwd: Path,
    env: dict[str, str],
    *,
    argv: Sequence[str] = APP,
    log: Path | None = None,
    ready: str = "/api/health",
    timeout: float = 30,
) -> Iterator[Server]:
    """`argv` (`python -m app` by default) on a free port (given to it as PORT, and in place
    of `{port}` in `argv`), run in `cwd` with exactly `env`, its output in `log`; yielded
    once `ready` answers 200, stopped on exit."""
    port = free_port()
    log = log or cwd / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [arg.replace("{port}", str(port)) for arg in argv],
            cwd=cwd,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop it in order
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(server.base + ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, server.log_tail()
            assert time.monotonic() < deadline, f"server did not start:\n{server.log_tail()}"
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def serve(cwd: Path, **env: str) -> Iterator[str]:
    """`python -m app` in `cwd` (so its default SQLite file lands there), its output in
    `cwd / "server.log"`; yields its base URL."""
    with start(cwd, clean_env(**env)) as server:
        yield server.base


@contextmanager
def serve_suite_db(cwd: Path, **env: str) -> Iterator[str]:
    """`serve` on the suite's own database (so the test sees what the process stores), with
    extra settings; `cwd` is made if missing."""
    cwd.mkdir(parents=True, exist_ok=True)
    with serve(cwd, DATABASE_URL=os.environ["DATABASE_URL"], **env) as base:
        yield base


@contextmanager
def scratch_postgres(url: str, prefix: str = "scratch") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `url`, dropped on exit: its URL."""
    server = make_url(url).set(drivername="postgresql")
    name = f"{prefix}_{uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        dsn = server.set(database="postgres").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f"DROP DATABASE {name} WITH (FORCE)"))


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


async def next_event(ws: ClientConnection, timeout: float = 5) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def assert_silent(ws: ClientConnection, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), wait)


async def close_code(ws: ClientConnection, timeout: float = 5) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


# --------------------------------------------------------------------------- mail


MAIL_FRONTEND = "https://app.example.com"  # FRONTEND_URL while a test reads mail
TOKEN = re.compile(r"token=([A-Za-z0-9_-]+)")


class Inbox:
    """An SMTP server that keeps what it receives: (recipient, subject, body)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body().get_content()  # type: ignore[union-attr]
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.mails.append((rcpt, str(msg["Subject"]), body))
        return "250 OK"

    def to(self, address: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [m for m in self.mails if m[0] == address]

    async def wait(self, address: str, count: int = 1, timeout: float = 15) -> str:
        """The body of the `count`th mail to `address`, once it is there."""
        deadline = time.monotonic() + timeout
        while len(self.to(address)) < count:
            assert time.monotonic() < deadline, f"no mail {count} for {address}: {self.mails}"
            await asyncio.sleep(0.05)
        return self.to(address)[count - 1][2]


def token_of(body: str) -> str:
    match = TOKEN.search(body)
    assert match, body
    return match.group(1)


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


async def listeners() -> int:
    """The event listeners of this suite's database (one per process), whatever carries
    the events: PostgreSQL's LISTEN, or Redis pub/sub when EVENTS_URL says so."""
    from app.core.channels import redis_client_name
    from app.core.settings import settings

    if settings.events_url:
        import redis.asyncio as redis

        name = redis_client_name()  # this database's: other apps may share the Redis
        async with redis.from_url(settings.events_url) as r:
            return sum(c["name"] == name for c in await r.client_list(_type="pubsub"))
    rows = await fetch(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'app-events' AND datname = current_database()"
    )
    return int(rows[0][0])


async def listening_again(count: int, seconds: float = 15) -> None:
    """Wait until `count` listeners of this suite's database are connected again."""
    deadline = time.monotonic() + seconds
    while (now := await listeners()) < count:
        assert time.monotonic() < deadline, f"{now} of {count} event listeners back in {seconds} s"
        await asyncio.sleep(0.1)


async def cut_listeners() -> None:
    """Every process's event listener on this suite's database loses its connection."""
    from app.core.channels import redis_client_name
    from app.core.settings import settings

    if settings.events_url:
        import redis.asyncio as redis

        name = redis_client_name()
        async with redis.from_url(settings.events_url) as r:
            for c in await r.client_list():
                if c["name"] == name:
                    await r.client_kill_filter(_id=c["id"])
        return
    await fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'app-events' AND datname = current_database()"
    )
